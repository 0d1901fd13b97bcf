"""Copying weights between models by layer name and shape (pre-training -> fine-tuning)."""

from dataclasses import dataclass, field

from tlunet.selection import check_selectors, iter_layers, matches

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


def transfer_weights(src, dst, *, include=None, exclude=(), match="path", rename=None, strict=False):
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

    Returns:
        `TransferReport`.
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
        layer.set_weights(src_layer.get_weights())
        report.copied.append(path)
    report.unused = [p for k, (p, _) in sources.items() if k not in used]
    if strict and (report.missing or report.shape_mismatch):
        raise ValueError(f"transfer_weights(strict=True) from {src.name!r} to {dst.name!r}: {report}; "
                         f"missing {report.missing[:5]}, mismatched {[m[0] for m in report.shape_mismatch[:5]]}")
    return report
