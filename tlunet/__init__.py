"""tlunet: transfer-learning U-Nets for medical image segmentation (Keras 3)."""

from tlunet._version import __version__  # the one place the version is written

from tlunet import _quiet  # noqa: F401  (first: the `tlunet` command keeps TensorFlow's start-up noise out)

import warnings

# A model.keras that tlunet writes holds no optimizer state (a deliverable, not a checkpoint), so
# Keras, which builds the optimizer while loading, would warn that it skips the missing variables.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning,
                        module="keras")

# Importing these registers every custom object a saved tlunet model can name (layers, and the
# losses and metrics in a compiled model's config), so `keras.models.load_model` needs no
# `custom_objects` after `import tlunet`; tfds_hc18 registers the "hc18" TFDS builder.
from tlunet import layers, losses, metrics  # noqa: F401
from tlunet.data import tfds_hc18  # noqa: F401
from tlunet.models import build_model, get_model_info, list_models
from tlunet.resources import list_experiments, list_samples, sample_path
from tlunet.transfer import TRANSFER_METHODS, TransferReport, build_transfer_model, transfer_weights

__all__ = ["build_model", "get_model_info", "list_models", "transfer_weights", "TransferReport", "build_transfer_model",
           "TRANSFER_METHODS", "list_experiments", "list_samples", "sample_path", "__version__"]
