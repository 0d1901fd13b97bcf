"""Encoder registry: which keras.applications model, which layers feed the skips, which input range.

An encoder is built as a nested `keras.Model` named "encoder" that keeps the keras.applications
layer names (`block4_conv3`, `block_12_add`, ...), so ImageNet weight files load into it unchanged
and fine-tuning can freeze it as one group. It hands out a feature pyramid keyed by level, as
keras-hub's backbones do: `{"P1": ..., "P5": ...}`, where Pn is 2**n times smaller than the input;
a decoder picks levels by key.
"""

import os
import warnings
from dataclasses import dataclass

import keras
import numpy as np

CHANNEL_MODES = ("repeat", "fold")
WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one pretrained encoder.

    Attributes:
        name: registry name.
        application: attribute of `keras.applications` that builds it.
        skip_layers: layer names whose outputs feed the decoder, shallow to deep; the last is the
            bridge (deepest feature map).
        reductions: downsampling factor of each skip layer's output.
        preprocessing: `EncoderPreprocessing` mode the ImageNet weights expect.
        first_conv: the layer whose kernel is summed over RGB in "fold" mode.
        imagenet_file: file name keras.applications downloads (cached in ~/.keras/models) — the file
            to fetch by hand for offline use.
    """

    name: str
    application: str
    skip_layers: tuple
    reductions: tuple
    preprocessing: str
    first_conv: str
    imagenet_file: str

    @property
    def levels(self):
        """The pyramid keys, shallow to deep ("P0" is full resolution)."""
        return tuple(f"P{int(np.log2(r))}" for r in self.reductions)

    @property
    def divisor(self):
        """Input sizes must be multiples of this: the deepest level's reduction."""
        return self.reductions[-1]


ENCODERS = {
    "vgg16": EncoderSpec(
        name="vgg16",
        application="VGG16",
        # Cheng & Lam's V-Unet: bridge at block5_conv3, the last pool is not used.
        skip_layers=("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
        reductions=(1, 2, 4, 8, 16),
        preprocessing="caffe",
        first_conv="block1_conv1",
        imagenet_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenetv2": EncoderSpec(
        name="mobilenetv2",
        application="MobileNetV2",
        # The stages segmentation-models-pytorch's mobilenet_v2 encoder returns (16/24/32/96/1280 ch).
        skip_layers=("expanded_conv_project_BN", "block_2_add", "block_5_add", "block_12_add",
                     "out_relu"),
        reductions=(2, 4, 8, 16, 32),
        preprocessing="tf",
        first_conv="Conv1",
        imagenet_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
}


def list_encoders():
    """Names of the registered encoders."""
    return sorted(ENCODERS)


def get_encoder_spec(name):
    """Returns the `EncoderSpec` of `name`; raises ValueError listing valid names."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}. Valid encoders: {list_encoders()}. "
                         f"Received: encoder={name!r}")
    return ENCODERS[name]


def _check_weights_arg(weights, spec):
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError("`encoder_weights` must be None, 'imagenet' or a path to a weights file. "
                         f"Received: encoder_weights={weights!r}")
    path = os.fspath(weights)
    if os.path.isdir(path):
        raise ValueError(f"encoder_weights {path!r} is a directory; give the weights file itself "
                         f"(e.g. {spec.imagenet_file!r})")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"encoder_weights file not found: {path!r}. For offline use, download "
            f"{spec.imagenet_file!r} (keras.applications.{spec.application} ImageNet weights, "
            "include_top=False) on a machine with internet and pass its path.")
    if not path.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"encoder_weights file {path!r} has an unsupported extension; expected one "
                         f"of {WEIGHT_SUFFIXES}.")
    return path


def _application(spec, input_shape, weights):
    """Builds the keras.applications model, turning load failures into errors that name the file."""
    app = getattr(keras.applications, spec.application)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = app(include_top=False, weights=weights, input_shape=input_shape)
        skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
        for w in caught:
            if str(w.message) not in skipped:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if skipped:
            # Keras loaded the file only in part; a half-pretrained encoder must not pass silently.
            raise ValueError(f"some layers were not found in the file ({skipped[0]})")
        if weights is not None:
            bad = [w.path for w in model.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))]
            if bad:
                raise ValueError(f"it holds NaN or inf values in {len(bad)} variables, e.g. {bad[:3]}")
        return model
    except Exception as e:  # noqa: BLE001 - re-raised with the file and the remedy named
        if weights == "imagenet":
            raise RuntimeError(
                f"Could not get ImageNet weights for the {spec.name} encoder ({type(e).__name__}: "
                f"{e}). Without network access, download {spec.imagenet_file!r} elsewhere and pass "
                "encoder_weights='/path/to/that/file'.") from e
        raise ValueError(
            f"encoder_weights file {weights!r} does not load into the {spec.name} encoder "
            f"(keras.applications.{spec.application}, include_top=False): "
            f"{type(e).__name__}: {e}") from e


def build_encoder(name, input_shape, weights=None, channel_mode="repeat"):
    """Builds encoder `name` as a multi-output model named "encoder".

    Args:
        name: registry name ("vgg16", "mobilenetv2").
        input_shape: (H, W, C) of the images the U-Net receives; C is 1 or 3, H/W may be None.
        weights: None (random), "imagenet" (keras.applications download) or a path to a weights
            file for the include_top=False application (.h5 as keras.applications ships it, or
            .weights.h5/.keras saved by Keras 3). Loading a file needs no network.
        channel_mode: for C=1 only. "repeat": the encoder keeps 3 input channels and the U-Net
            tiles grey to RGB in front of it (Cheng & Lam); "fold": the encoder takes 1 channel and
            its first conv kernel is the pretrained kernel summed over RGB (the same response to a
            grey image, a third of the first-layer compute).

    Returns:
        `keras.Model` named "encoder" whose output is the feature pyramid {"P<n>": features at 1/2**n}.
    """
    spec = get_encoder_spec(name)
    weights = _check_weights_arg(weights, spec)
    if channel_mode not in CHANNEL_MODES:
        raise ValueError(f"`channel_mode` must be one of {CHANNEL_MODES}. "
                         f"Received: channel_mode={channel_mode!r}")
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ValueError(f"The {name} encoder takes 1 or 3 channels. Received: input_shape={input_shape}")

    if channels == 3 or channel_mode == "repeat":
        base = _application(spec, (height, width, 3), weights)
    else:
        base = _application(spec, (height, width, 1), None)
        if weights is not None:
            _fold_first_conv(_application(spec, (height, width, 3), weights), base, spec.first_conv)
    outputs = {level: base.get_layer(layer_name).output for level, layer_name in zip(spec.levels, spec.skip_layers)}
    return keras.Model(base.inputs, outputs, name="encoder")


def _fold_first_conv(rgb_model, grey_model, first_conv):
    """Copies all weights of `rgb_model` into `grey_model`, summing `first_conv`'s kernel over RGB."""
    for src, dst in zip(rgb_model.layers, grey_model.layers):
        weights = src.get_weights()
        if src.name == first_conv:
            weights[0] = np.sum(weights[0], axis=2, keepdims=True)
        dst.set_weights(weights)
