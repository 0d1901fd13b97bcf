"""Model zoo: every model of the papers, built by name with validated arguments."""

import inspect
from dataclasses import dataclass

from tlunet._suggest import did_you_mean, did_you_mean_keys
from tlunet.encoders import get_encoder_spec
from tlunet.models.classifier import seg_to_classifier, segmentation_branch
from tlunet.models.encoder_unet import build_mobilenetv2_unet, build_vgg16_unet
from tlunet.models.resnet3d import R3D18_DIVISOR, build_resnet18_3d_unet
from tlunet.models.unet import UNET3D_FILTERS, UNET_FILTERS, build_hybrid_unet, build_hybrid_unet3d, build_unet, build_unet3d, pooling_divisor


@dataclass(frozen=True)
class ModelInfo:
    """A registered model.

    Attributes:
        name: registry name.
        builder: function(input_shape, classes, **kw) -> keras.Model.
        description: one line.
        paper: where it comes from.
        reference_shape: the input shape the paper's parameter counts refer to.
        divisor: spatial sizes must be multiples of this (an int, or one per spatial axis).
        channels: allowed channel counts, or None for any.
        pretrained_encoder: whether `encoder_weights` applies.
    """

    name: str
    builder: callable
    description: str
    paper: str
    reference_shape: tuple
    divisor: int
    channels: tuple = None
    pretrained_encoder: bool = False

    @property
    def spatial_dims(self):
        """2 or 3: the number of spatial axes of the model's input."""
        return len(self.reference_shape) - 1


_REGISTRY = {}


def register_model(info):
    """Adds `info` (a `ModelInfo`) to the zoo under `info.name`, so `build_model`, `list_models` and
    `get_model_info` find it; returns `info`."""
    _REGISTRY[info.name] = info
    return info


register_model(ModelInfo(
    "unet", build_unet,
    "plain U-Net 64-1024 filters, no BN, transposed-conv decoder (X-Unet)",
    "Cheng & Lam 2021", reference_shape=(256, 256, 3), divisor=pooling_divisor(UNET_FILTERS)))
register_model(ModelInfo(
    "vgg16_unet", build_vgg16_unet,
    "VGG16 encoder (bridge block5_conv3), transposed-conv decoder (V-Unet)",
    "Cheng & Lam 2021", reference_shape=(256, 256, 3), divisor=get_encoder_spec("vgg16").divisor, channels=(1, 3),
    pretrained_encoder=True))
register_model(ModelInfo(
    "mobilenetv2_unet", build_mobilenetv2_unet,
    "MobileNetV2 encoder, smp-style decoder 256-16 with BN, nearest upsampling",
    "Wang et al. 2023", reference_shape=(512, 512, 3), divisor=get_encoder_spec("mobilenetv2").divisor,
    channels=(1, 3), pretrained_encoder=True))
register_model(ModelInfo(
    "unet3d", build_unet3d,
    "3D U-Net 32-320 filters, conv-BN-ReLU, transposed-conv decoder (nnU-Net widths)",
    "Wang et al. 2020", reference_shape=(64, 128, 128, 1), divisor=pooling_divisor(UNET3D_FILTERS)))
register_model(ModelInfo(
    "hybrid_unet3d", build_hybrid_unet3d,
    "unet3d with two encoders (target + pre-trained source) merged by selective fusion",
    "Wang et al. 2020", reference_shape=(64, 128, 128, 1), divisor=pooling_divisor(UNET3D_FILTERS)))
register_model(ModelInfo(
    "resnet18_3d_unet", build_resnet18_3d_unet,
    "3D U-Net on a torchvision r3d_18-layout ResNet-18 encoder (Kinetics-400 weights)",
    "Bressem et al. 2021", reference_shape=(32, 128, 128, 1), divisor=R3D18_DIVISOR,
    pretrained_encoder=True))


def list_models():
    """Sorted names of every model `build_model` accepts."""
    return sorted(_REGISTRY)


def get_model_info(name):
    """Returns the `ModelInfo` of `name`; ValueError listing valid names if unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}{did_you_mean(name, list_models())}. Valid models: {list_models()}. "
                         f"Received: name={name!r}")
    return _REGISTRY[name]


def _validate_shape(info, input_shape):
    rank = info.spatial_dims + 1
    try:
        shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or len(shape) != rank or (shape[-1] is None or shape[-1] < 1):
        raise ValueError(
            f"{info.name} takes input_shape with {rank} entries (spatial sizes, then channels), "
            f"e.g. {info.reference_shape}. Received: input_shape={input_shape}")
    divisors = info.divisor if isinstance(info.divisor, tuple) else (info.divisor,) * info.spatial_dims
    bad = [d for d, k in zip(shape[:-1], divisors) if d is not None and (d < k or d % k)]
    if bad:
        raise ValueError(
            f"{info.name} needs spatial sizes that are multiples of "
            f"{info.divisor if isinstance(info.divisor, int) else ' x '.join(map(str, divisors))} "
            f"(or None). Received: input_shape={input_shape}")
    if info.channels is not None and shape[-1] not in info.channels:
        raise ValueError(f"{info.name} takes {' or '.join(map(str, info.channels))} input channels. "
                         f"Received: input_shape={input_shape}")
    return shape


def build_model(name, input_shape=None, classes=1, encoder_weights=None, **kwargs):
    """Builds a model of the zoo by name.

    Args:
        name: one of `list_models()`.
        input_shape: (H, W, C) for 2D models (default: the paper's reference shape); H and W may be
            None for fully convolutional use.
        classes: output channels; 1 -> sigmoid, more -> softmax unless `activation` says otherwise.
        encoder_weights: for models with a pretrained encoder: None, "imagenet" (needs network the
            first time) or a path to a weights file (no network).
        **kwargs: model-specific options, e.g. `activation=None` for logits,
            `channel_mode="fold"` for 1-channel inputs to pretrained encoders.

    Returns:
        A functional `keras.Model` taking float images in [0, 1].

    Raises:
        ValueError: unknown name or option, impossible shape, bad `classes`.
    """
    info = get_model_info(name)
    shape = _validate_shape(info, info.reference_shape if input_shape is None else input_shape)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    params = inspect.signature(info.builder).parameters
    allowed = [p for p in params if p not in ("input_shape", "classes")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name} does not take {unknown}{did_you_mean_keys(unknown, allowed)}. "
                         f"Valid options: {allowed}.")
    if info.pretrained_encoder:
        kwargs["encoder_weights"] = encoder_weights
    elif encoder_weights is not None:
        raise ValueError(
            f"{name} has no pretrained encoder, so `encoder_weights` must be None; to start from a "
            "pre-trained model of the same architecture use tlunet.transfer_weights(src, dst). "
            f"Received: encoder_weights={encoder_weights!r}")
    return info.builder(shape, classes, **kwargs)


def check_spatial_size(name, sizes):
    """Raises ValueError, naming the model and what it needs, when `name` cannot take inputs of the
    spatial `sizes` (e.g. a U-Net whose sizes must be multiples of 32)."""
    info = get_model_info(name)
    _validate_shape(info, (*sizes, (info.channels or (1,))[0]))


__all__ = ["check_spatial_size", "seg_to_classifier", "segmentation_branch", "ModelInfo", "build_model", "get_model_info", "list_models", "register_model",
           "build_unet", "build_unet3d", "build_hybrid_unet", "build_hybrid_unet3d", "build_vgg16_unet", "build_mobilenetv2_unet", "build_resnet18_3d_unet"]
