"""tlunet's version, in one place: setup.py reads this file (without importing tlunet, which imports
TensorFlow) and `tlunet.__version__` imports it. Releases are tagged `v<version>` in git."""

__version__ = "0.1.0"
