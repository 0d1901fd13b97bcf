"""tlunet's version, in one place: setup.py reads this file (without importing tlunet, which imports
TensorFlow), as does `tlunet --version`; `tlunet.__version__` imports it."""

__version__ = "0.1.0"
