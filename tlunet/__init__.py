"""tlunet: transfer-learning U-Nets for medical image segmentation (Keras 3)."""

__version__ = "0.1.0"

from tlunet import layers  # noqa: F401  (registers custom objects for keras.models.load_model)
from tlunet.models import build_model, get_model_info, list_models
from tlunet.transfer import TRANSFER_METHODS, TransferReport, build_transfer_model, transfer_weights

__all__ = ["build_model", "get_model_info", "list_models", "transfer_weights", "TransferReport", "build_transfer_model", "TRANSFER_METHODS",
           "__version__"]
