"""tlunet: transfer-learning U-Nets for medical image segmentation, in Keras 3."""

import os
import re

from setuptools import find_packages, setup


def _version():
    """tlunet/_version.py holds the version; read as text, since importing tlunet imports TensorFlow."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tlunet", "_version.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


# The API reference (mkdocs.yml): `pip install -e .[docs]`, then `mkdocs serve`.
DOCS = ["mkdocs>=1.6,<2", "mkdocstrings[python]>=1.0", "mkdocstrings-python>=2.0", "mkdocs-include-markdown-plugin>=7"]

# LiteRT and ONNX export: TensorFlow converts to LiteRT itself; ai-edge-litert is the LiteRT runtime
# that runs .tflite files (TensorFlow's tf.lite.Interpreter is deprecated); tf2onnx + onnx convert
# to ONNX, onnxruntime runs it.
EXPORT = ["tf2onnx>=1.17", "onnx>=1.17", "onnxruntime>=1.20", "ai-edge-litert>=2.0"]

setup(
    name="tlunet",
    version=_version(),
    description="Transfer-learning U-Nets for medical image segmentation (Keras 3 / TensorFlow)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # experiments/ and data/ (the papers' configs and the bundled samples) are installed inside the
    # package, so `tlunet experiment NAME` finds them after any kind of install (tlunet.resources).
    # tlunet_cli: the console script's parser, apart from tlunet so `tlunet --help` needs no TensorFlow.
    packages=find_packages(include=["tlunet", "tlunet.*", "tlunet_cli"]) + ["tlunet.experiments", "tlunet.sample_data"],
    package_dir={"tlunet.experiments": "experiments", "tlunet.sample_data": "data"},
    package_data={"tlunet_cli": ["catalog.json"], "tlunet.experiments": ["README.md", "*/config.yaml", "*/README.md"],
                  "tlunet.sample_data": ["README.md", "*/README.md", "*/*.csv", "*/*/*.png"]},
    install_requires=[
        # >= 2.16 so Colab's preinstalled TensorFlow (with Keras 3) is used as it is. Capped below the
        # next minor of the newest tested (TensorFlow 2.21, Keras 3.15): tlunet/_keras_compat.py
        # patches Keras internals for distributed training, checked by tests/test_keras_compat.py.
        "tensorflow>=2.16,<2.22",
        "keras>=3.0,<3.16",
        "numpy",
        "scikit-image",
        "matplotlib",
        "nibabel",
        "pyyaml",
        "tqdm",
        "tensorflow-datasets",
        "tensorboard",  # training.tensorboard / --tensorboard (TensorFlow >= 2.21 no longer pulls it in)
    ],
    extras_require={
        # medpy: the independent implementation the boundary-voxel and Dice tests compare against.
        # surface-distance: DeepMind's surface-element measures (the reference definition of NSD,
        # Hausdorff, HD95, ASSD), a PyPI upload of github.com/google-deepmind/surface-distance.
        # torch: the reference forward pass that proves the r3d_18 converter (plain torch.nn, no
        # torchvision); those tests skip without it. Pinned to the CPU build the CI machines carry
        # (a newer torch from the registry would pull gigabytes of CUDA wheels).
        # setuptools/wheel: the install test builds a wheel of this checkout without build isolation.
        # nbclient/nbformat/ipykernel: tests/test_notebooks.py executes examples/*.ipynb; DOCS: tests/test_docs.py
        # builds the API reference with `mkdocs build --strict`.
        "dev": ["pytest>=7", "pytest-xdist>=3", "medpy>=0.5", "surface-distance==0.1", "torch==2.13.0", "setuptools>=64", "wheel",
                "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", *DOCS, *EXPORT],
        "docs": DOCS,
        # Keras' legacy ImageDataGenerator, the baseline of benchmarks/pipeline.py; the PyTorch peers of
        # benchmarks/peers.py (MONAI, segmentation-models-pytorch), benchmark-only, never runtime
        # dependencies. torch is pinned to the CPU build as in "dev", so pip keeps it and resolves the
        # rest around it (no --no-deps needed): it adds torchvision 0.28.0 (PyPI's, built for CUDA torch:
        # its C ops do not load beside the CPU build, and peers.py declares the two op schemas its import
        # needs; smp only uses its model classes), timm, huggingface-hub and safetensors.
        "bench": ["tf-keras", "torch==2.13.0", "monai>=1.4", "segmentation-models-pytorch>=0.5"],
        # The reference implementation benchmarks compare against (needs SM_FRAMEWORK=tf.keras).
        "reference": ["segmentation-models==1.0.1"],
        # `tlunet export --format litert|onnx` (its ONNX tests skip without them; LiteRT falls back to tf.lite).
        "export": EXPORT,
    },
    entry_points={"console_scripts": ["tlunet=tlunet_cli:main"]},
)
