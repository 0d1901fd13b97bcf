"""Copying weights between models by layer name and shape (pre-training -> fine-tuning)."""

from dataclasses import dataclass, field

import keras
import numpy as np

from tlunet.models.unet import build_hybrid_unet, build_unet
from tlunet.selection import check_selectors, group_of, iter_layers, matches

MATCH_MODES = ("path", "name")


@dataclass
class TransferReport:
    """What `transfer_weights` did.

    Attributes:
        copied: destination layer paths that received the source layer's weights.
        shape_mismatch: (path, source shapes, destination shapes) of same-named layers left alone.
        missing: destination layers with weights (in scope) that have no source layer.
        unused: source layers with weights that nothing was copied from.
    """

    copied: list = field(default_factory=list)
    shape_mismatch: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unused: list = field(default_factory=list)

    def __str__(self):
        return (f"copied {len(self.copied)} layers, {len(self.shape_mismatch)} shape mismatches, "
                f"{len(self.missing)} missing in source, {len(self.unused)} unused source layers")


def _key(path, match):
    return path if match == "path" else path.rsplit("/", 1)[-1]


def _index(model, match, rename=None):
    index = {}
    for path, layer in iter_layers(model):
        if not layer.weights:
            continue
        key = _key(path, match)
        if rename is not None:
            key = rename.get(key, key) if isinstance(rename, dict) else rename(key)
        if key in index:
            raise ValueError(f"Layer key {key!r} occurs twice in model {model.name!r}; use match='path'.")
        index[key] = (path, layer)
    return index


def transfer_weights(src, dst, *, include=None, exclude=(), match="path", rename=None, strict=False,
                     allow_empty=False):
    """Copies weights from `src` into `dst` for layers matched by name whose weight shapes agree.

    Args:
        src: the pre-trained model.
        dst: the model to initialise (modified in place).
        include: selectors (see `tlunet.selection`) of the `dst` layers to fill; None: all.
        exclude: selectors of `dst` layers to leave alone, e.g. ["head"] for body fine-tuning.
        match: "path" — layers match by full path (`encoder/block1_conv1`); "name" — by their own
            name only, e.g. to fill a U-Net's nested encoder from a bare keras.applications model.
        rename: dict or function mapping a source key to the destination key it should fill.
        strict: raise ValueError unless every in-scope `dst` layer was copied.
        allow_empty: a transfer that copies no layer at all (names that do not match, e.g. a model
            built under other layer names) raises ValueError unless this is True.

    Returns:
        `TransferReport`.

    Raises:
        ValueError: no layer copied (without `allow_empty`); a source layer holding NaN or inf (a
            diverged source model); with `strict`, an in-scope layer not copied.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"`match` must be one of {MATCH_MODES}. Received: match={match!r}")
    if include is not None:
        check_selectors(dst, include, "include")
    check_selectors(dst, exclude, "exclude")
    sources = _index(src, match, rename)
    report = TransferReport()
    used = set()
    for key, (path, layer) in _index(dst, match).items():
        in_scope = include is None or any(matches(path, s) for s in include)
        if not in_scope or any(matches(path, s) for s in exclude):
            continue
        if key not in sources:
            report.missing.append(path)
            continue
        used.add(key)
        src_layer = sources[key][1]
        src_shapes = [tuple(w.shape) for w in src_layer.weights]
        dst_shapes = [tuple(w.shape) for w in layer.weights]
        if src_shapes != dst_shapes:
            report.shape_mismatch.append((path, src_shapes, dst_shapes))
            continue
        values = src_layer.get_weights()
        bad = [i for i, w in enumerate(values) if not np.all(np.isfinite(w))]
        if bad:
            raise ValueError(f"transfer_weights: source layer {sources[key][0]!r} of {src.name!r} holds NaN or inf "
                             f"values (weights {bad}); a diverged source model cannot initialise {dst.name!r}")
        layer.set_weights(values)
        report.copied.append(path)
    report.unused = [p for k, (p, _) in sources.items() if k not in used]
    if not report.copied and not allow_empty:
        raise ValueError(f"transfer_weights from {src.name!r} to {dst.name!r} copied no layer: {report}. Layer "
                         f"names must match (match={match!r}); e.g. destination {report.missing[:3]}, source "
                         f"{report.unused[:3]}. Pass allow_empty=True if an empty transfer is intended.")
    if strict and (report.missing or report.shape_mismatch):
        raise ValueError(f"transfer_weights(strict=True) from {src.name!r} to {dst.name!r}: {report}; "
                         f"missing {report.missing[:5]}, mismatched {[m[0] for m in report.shape_mismatch[:5]]}")
    return report


# ------------------------------------------------------------ Wang et al. 2020's transfer methods
TRANSFER_METHODS = {
    "scratch": "no transfer: the target model from random initialisation (the baseline)",
    "continual": "continual learning: the whole pre-trained model, head included, fine-tuned on the target",
    "body": "body fine-tuning: every layer but the head transferred, a new head, all fine-tuned",
    "encoder": "pre-trained encoder: encoder blocks and bottleneck transferred, decoder and head new",
    "hybrid": "hybrid encoder: a new target encoder plus the pre-trained encoder (adapted), merged by "
              "selective fusion; decoder and head new",
}


def _unet_config(source):
    """(`build_unet` arguments, classes) of a built plain U-Net, read from its layers' configs by group: the
    width of each encoder level and of the bottleneck (the `filters` of the first of their two
    convolutions, in graph order), and whether the encoder uses BatchNorm."""
    widths = {"encoder": [], "bottleneck": [], "head": []}
    batchnorm = False
    for path, layer in iter_layers(source):
        group = group_of(path)
        if group not in widths or "/" in path:
            continue  # nested encoders (pretrained backbones) are not plain U-Nets
        config = layer.get_config()
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv3D)):
            widths[group].append(config["filters"])
        batchnorm |= group == "encoder" and isinstance(layer, keras.layers.BatchNormalization)
    classes = widths.pop("head")
    widths = {group: values[::2] for group, values in widths.items()}  # two convolutions per level
    if not widths["encoder"] or len(widths["bottleneck"]) != 1 or len(classes) != 1:
        raise ValueError(f"Transfer methods need a plain U-Net source (unet / unet3d: two convolutions per "
                         f"encoder level and in the bottleneck, one head convolution); model {source.name!r} is not one.")
    return {"filters": tuple(widths["encoder"]) + tuple(widths["bottleneck"]), "batchnorm": batchnorm}, classes[0]


def build_transfer_model(method, source, *, classes=None, input_shape=None, activation="auto"):
    """A target model initialised from a pre-trained `source` U-Net by one of Wang et al. 2020's
    transfer methods (see `TRANSFER_METHODS`). Train it on the target afterwards with every layer
    trainable (all four methods fine-tune everything; freeze with `tlunet.finetune` if wanted).

    Args:
        method: one of `TRANSFER_METHODS`.
        source: a trained plain U-Net (`unet` or `unet3d`; any `build_unet` model).
        classes: target classes; default the source's. "continual" needs the source's.
        input_shape: target input shape; default the source's (the U-Net is fully convolutional).
        activation: head activation of newly built heads.

    Returns:
        (model, TransferReport) — the report lists the copied layer paths.
    """

    if method not in TRANSFER_METHODS:
        raise ValueError(f"`method` must be one of {sorted(TRANSFER_METHODS)}. Received: method={method!r}")
    arch, source_classes = _unet_config(source)
    classes = source_classes if classes is None else classes
    input_shape = tuple(source.input_shape[1:]) if input_shape is None else tuple(input_shape)
    if method == "continual" and classes != source_classes:
        raise ValueError(f"continual learning keeps the source head ({source_classes} classes); for "
                         f"{classes} target classes use method='body'. Received: classes={classes}")
    if method == "hybrid":
        model = build_hybrid_unet(input_shape, classes, activation=activation,
                                  name="hybrid_unet3d" if len(input_shape) == 4 else "hybrid_unet", **arch)
        report = transfer_weights(source, model, include=["encoder_source"],
                                  rename=lambda key: f"encoder_source/{key}", strict=True)
        return model, report
    name = "unet3d" if len(input_shape) == 4 else "unet"
    model = build_unet(input_shape, classes, activation=activation, name=name, **arch)
    if method == "scratch":
        return model, TransferReport(missing=[p for p, layer in iter_layers(model) if layer.weights])
    scope = {"continual": (None, ()), "body": (None, ["head"]), "encoder": (["encoder", "bottleneck"], ())}[method]
    report = transfer_weights(source, model, include=scope[0], exclude=scope[1], strict=True)
    return model, report
