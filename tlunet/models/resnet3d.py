"""3D U-Net with a ResNet-18 3D encoder in torchvision's r3d_18 layout (Bressem et al. 2021).

The encoder reproduces torchvision.models.video.r3d_18 layer for layer — stem Conv3D 3x7x7 with
stride (1, 2, 2), four stages of two BasicBlocks (64/128/256/512 channels, 3x3x3 convolutions,
1x1x1 stride-2 downsample + BN where the shape changes) — with torch's symmetric padding and
BatchNorm epsilon, so Kinetics-400 weights can be carried over. Layer names follow the torch
state_dict (`layer2_0_conv1` <-> `layer2.0.conv1.0`).
"""

import os
import re

import keras
import numpy as np
from keras import layers

from tlunet.models.blocks import decoder_stage, segmentation_head

KINETICS400_URL = "https://download.pytorch.org/models/r3d_18-b3b3357e.pth"
KINETICS400_FILE = "r3d_18-b3b3357e.pth"
STATE_DICT_SUFFIXES = (".pth", ".pt", ".npz")
# torchvision's normalisation for its Kinetics-400 video models (RGB, input in [0, 1])
KINETICS400_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS400_STD = (0.22803, 0.22145, 0.216989)

_BN = {"epsilon": 1e-5, "momentum": 0.9}  # torch BatchNorm3d defaults (eps 1e-5, momentum 0.1)


def _conv_bn(x, filters, kernel, stride, name, relu=True):
    pad = tuple(k // 2 for k in kernel)
    if any(s > 1 for s in stride) and any(pad):
        # torch pads symmetrically; Keras "same" with stride 2 would pad one side more
        x = layers.ZeroPadding3D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv3D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn", **_BN)(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


# r3d_18's downsampling: the stem by (1, 2, 2), layer2-4 by 2 on every axis
_STRIDES = ((1, 2, 2), (1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
R3D18_DIVISOR = tuple(int(x) for x in np.prod(_STRIDES, axis=0))  # (8, 16, 16)


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = _conv_bn(x, filters, (3, 3, 3), (stride,) * 3, f"{name}_conv1")
    y = _conv_bn(y, filters, (3, 3, 3), (1, 1, 1), f"{name}_conv2", relu=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, (1, 1, 1), (stride,) * 3, f"{name}_downsample", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_r3d18_encoder(input_shape):
    """The r3d_18 feature extractor as a model named "encoder".

    Returns:
        `keras.Model` with outputs [stem, layer1, layer2, layer3, layer4] at resolutions
        (D, H/2, W/2), (D, H/2, W/2), (D/2, H/4, W/4), (D/4, H/8, W/8), (D/8, H/16, W/16).
    """
    inputs = keras.Input(input_shape, name="volume")
    stem = _conv_bn(inputs, 64, (3, 7, 7), (1, 2, 2), "stem")
    x, outputs = stem, [stem]
    for stage, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        x = _basic_block(x, filters, stride, f"layer{stage}_0")
        x = _basic_block(x, filters, 1, f"layer{stage}_1")
        outputs.append(x)
    return keras.Model(inputs, outputs, name="encoder")


def _torch_key(keras_name):
    """`layer2_0_downsample_bn` -> `layer2.0.downsample.1`; `stem_conv` -> `stem.0`."""
    base, kind = keras_name.rsplit("_", 1)
    index = {"conv": "0", "bn": "1"}[kind]
    m = re.fullmatch(r"layer(\d)_(\d)_(conv1|conv2|downsample)", base)
    return f"layer{m[1]}.{m[2]}.{m[3]}.{index}" if m else f"{base}.{index}"


def read_state_dict(path):
    """Reads a torch `state_dict` as {key: numpy array} from a .pth/.pt file (needs torch) or from
    an .npz holding the same keys (no torch needed; see `save_state_dict_npz`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"r3d_18 weights {path!r} is a directory; give the .pth/.npz file itself")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"r3d_18 weights file not found: {path!r}. torchvision's Kinetics-400 weights are "
            f"{KINETICS400_URL} ({KINETICS400_FILE}).")
    if not path.endswith(STATE_DICT_SUFFIXES):
        raise ValueError(f"r3d_18 weights file {path!r} has an unsupported extension; expected one of "
                         f"{STATE_DICT_SUFFIXES} (a torch state_dict, or an .npz of its arrays).")
    if path.endswith(".npz"):
        try:
            with np.load(path) as data:
                return _finite({k: data[k] for k in data.files}, path)
        except (OSError, ValueError, EOFError) as e:
            if "NaN" in str(e):
                raise
            raise ValueError(f"r3d_18 weights file {path!r} is not a readable .npz ({type(e).__name__}: {e})") from e
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path!r} needs torch (`pip install torch`). Without torch, convert it once "
            "elsewhere with tlunet.models.resnet3d.save_state_dict_npz(pth, npz) and pass the .npz.") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"r3d_18 weights file {path!r} is not a readable torch state_dict: "
                         f"{type(e).__name__}: {e}") from e
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return _finite({k: v.detach().cpu().numpy() for k, v in state.items()}, path)


def _finite(state, path):
    bad = [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"r3d_18 weights file {path!r} holds NaN or inf values in {len(bad)} arrays, e.g. {bad[:3]}")
    return state


def save_state_dict_npz(pth_path, npz_path):
    """Converts a torch r3d_18 state_dict file into an .npz that loads without torch."""
    np.savez(npz_path, **read_state_dict(pth_path))
    return npz_path


def load_r3d18_state_dict(encoder, state_dict, *, source="state_dict"):
    """Copies a torchvision r3d_18 `state_dict` into an encoder from `build_r3d18_encoder`.

    Conv3d kernels (out, in, kd, kh, kw) become Keras (kd, kh, kw, in, out); BatchNorm3d weight,
    bias, running_mean, running_var become gamma, beta, moving_mean, moving_variance. For a
    1-channel encoder the stem kernel is summed over RGB ("fold"): a grey volume then gives the
    same features as the RGB model fed that volume in all three channels. `fc.*` and
    `num_batches_tracked` are not used. Every encoder weight must be found with the right shape,
    otherwise nothing is half-loaded: ValueError naming the keys.

    Args:
        encoder: the Keras r3d_18 encoder (or a model containing it as layer "encoder").
        state_dict: {key: array}, e.g. from `read_state_dict`.
        source: a name for error messages (the file).

    Returns:
        The sorted list of state_dict keys that were not used.
    """
    if "encoder" in [layer.name for layer in encoder.layers]:
        encoder = encoder.get_layer("encoder")
    used, updates, problems = set(), [], []
    for layer in encoder.layers:
        if not layer.weights:
            continue
        key = _torch_key(layer.name)
        if isinstance(layer, layers.Conv3D):
            names = [f"{key}.weight"]
        else:
            names = [f"{key}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        missing = [n for n in names if n not in state_dict]
        if missing:
            problems.append(f"missing {missing}")
            continue
        arrays = [np.asarray(state_dict[n], dtype="float32") for n in names]
        if isinstance(layer, layers.Conv3D):
            kernel = arrays[0].transpose(2, 3, 4, 1, 0)
            expected = tuple(layer.kernel.shape)
            if layer.name == "stem_conv" and expected[3] == 1 and kernel.shape[3] == 3:
                kernel = kernel.sum(axis=3, keepdims=True)
            arrays = [kernel]
        got = [a.shape for a in arrays]
        want = [tuple(w.shape) for w in layer.weights]
        if got != want:
            problems.append(f"{key}: shapes {got} do not fit {layer.name} {want}")
            continue
        updates.append((layer, arrays))
        used.update(names)
    if problems:
        raise ValueError(f"{source} is not an r3d_18 state_dict for this encoder: "
                         + "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    for layer, arrays in updates:
        layer.set_weights(arrays)
    return sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))


def _resolve_weights(weights):
    if weights is None:
        return None
    if weights == "kinetics400":
        try:
            return keras.utils.get_file(KINETICS400_FILE, KINETICS400_URL, cache_subdir="models")
        except Exception as e:  # noqa: BLE001 - offline: say how to do it by hand
            raise RuntimeError(
                f"Could not download the Kinetics-400 r3d_18 weights ({type(e).__name__}: {e}). "
                f"Without network access, fetch {KINETICS400_URL} elsewhere and pass "
                "encoder_weights='/path/to/r3d_18-b3b3357e.pth' (or an .npz of it).") from e
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError("`encoder_weights` must be None, 'kinetics400' or a path to an r3d_18 "
                         f"state_dict (.pth/.pt/.npz). Received: encoder_weights={weights!r}")
    return os.fspath(weights)


def build_resnet18_3d_unet(input_shape, classes=1, *, activation="auto", decoder_filters=(256, 128, 64, 32),
                           encoder_weights=None):
    """3D U-Net on the r3d_18 encoder: decoder stages upsample (nearest) and concatenate layer3,
    layer2, layer1, then return to full in-plane resolution (the stem kept depth); conv-BN-ReLU
    blocks; 1x1x1 head. Input (D, H, W, C) with D divisible by 8 and H, W by 16.

    `encoder_weights`: None (random), "kinetics400" (torchvision's weights; downloads once and
    needs torch to read) or a path to an r3d_18 state_dict (.pth/.pt, or an .npz without torch).
    With 1 input channel the stem is folded from RGB (see `load_r3d18_state_dict`). The input is
    used as given: normalise CT intensities before the model (e.g. HU window to [0, 1]).
    """
    path = _resolve_weights(encoder_weights)
    state = read_state_dict(path) if path is not None else None
    inputs = keras.Input(input_shape, name="volume")
    encoder = build_r3d18_encoder(input_shape)
    if state is not None:
        load_r3d18_state_dict(encoder, state, source=f"encoder_weights file {path!r}")
    _, l1, l2, l3, l4 = encoder(inputs)
    x = l4
    for i, (skip, factor) in enumerate(((l3, 2), (l2, 2), (l1, 2), (None, (1, 2, 2)))):
        x = decoder_stage(x, skip, decoder_filters[i], name=f"decoder_stage{i}", spatial_dims=3,
                          upsample="nearest", batchnorm=True, factor=factor)
    outputs = segmentation_head(x, classes, activation=activation, kernel_size=1, spatial_dims=3)
    return keras.Model(inputs, outputs, name="resnet18_3d_unet")


__all__ = ["build_r3d18_encoder", "build_resnet18_3d_unet", "load_r3d18_state_dict", "read_state_dict",
           "save_state_dict_npz", "KINETICS400_URL"]
