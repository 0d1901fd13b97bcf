"""Inference: whole volumes with sliding windows, overlap, Gaussian blending and flip TTA
(`sliding_window_predict`). 2D image batches with optional flip TTA (`predict_images`), the check
that outputs are probabilities and the evaluation settings live in `tlunet.postprocess`, and are
importable from here too.

A 3D model trained on patches segments volumes of any size: the volume is covered by windows of
the patch size, evenly spaced with at least `overlap` between neighbours; each window's prediction
is weighted by a Gaussian centred on the window (its centre is the most reliable, as in nnU-Net)
and the weighted predictions are averaged voxel by voxel.
"""

import itertools
import weakref

import numpy as np
import tensorflow as tf

from tlunet.postprocess import (  # noqa: F401  (importable from here too)
    EVALUATION_DEFAULTS, IMAGE_TTA, BadModelOutput, check_probabilities, predict_images)
from tlunet.progress import progress as _progress

BLEND_MODES = ("gaussian", "constant")

# model -> its forward pass traced once for batches of any size. `predict_on_batch` traces a model
# again for a last, shorter batch of windows; a 3D U-Net's trace costs seconds. Weak keys, and a
# weak reference inside: a model that is gone takes its trace.
_WINDOW_FORWARDS = weakref.WeakKeyDictionary()


def _window_forward(model):
    """`model(x, training=False)` as a tf.function of any batch size, traced on its first call."""
    forward = _WINDOW_FORWARDS.get(model)
    if forward is None:
        ref = weakref.ref(model)
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        forward = _WINDOW_FORWARDS[model] = tf.function(lambda x: ref()(x, training=False), input_signature=[spec],
                                                        autograph=False)
    return forward


def gaussian_importance(patch_size, sigma_scale=0.125):
    """A Gaussian weight map over a patch (sigma = `sigma_scale` x the side), max 1, no zeros."""
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) for p in patch_size], indexing="ij")
    centre = [(p - 1) / 2 for p in patch_size]
    sigma = [max(p * sigma_scale, 1e-6) for p in patch_size]
    w = np.exp(-0.5 * sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma)))
    w /= w.max()
    return np.maximum(w, w[w > 0].min()).astype(np.float32)


def window_starts(size, patch, overlap):
    """Start offsets along one axis: the fewest windows whose step is at most patch*(1-overlap),
    spread evenly from 0 to size - patch."""
    if size <= patch:
        return [0]
    step = patch * (1 - overlap)
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def _flip_sets(tta, spatial_dims):
    if tta in (False, None):
        return [()]
    if tta is True or tta == "flips":
        axes = range(spatial_dims)
    else:
        axes = tuple(tta)
        if not axes or any(a not in range(spatial_dims) for a in axes):
            raise ValueError(f"`tta` must be False, True/'flips' or spatial axes in 0..{spatial_dims - 1}. "
                             f"Received: tta={tta!r}")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def sliding_window_predict(model, volume, patch_size=None, *, overlap=0.5, batch_size=2, blend="gaussian",
                           tta=False, pad_value=0.0, progress=False):
    """Segments a whole volume (or image) with a patch-trained model.

    Args:
        model: a Keras model taking (B, *patch_size, C) and returning (B, *patch_size, K).
        volume: (D, H, W) or (D, H, W, C) array, already normalised as in training (for 2D models
            (H, W) or (H, W, C)).
        patch_size: window size; default the model's static input size.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        batch_size: windows per forward pass.
        blend: "gaussian" (centre-weighted) or "constant" (plain average).
        tta: False; True/"flips" to average over mirrorings along every spatial axis (2**dims
            passes per window); or a tuple of spatial axes to mirror.
        pad_value: fills volumes smaller than a window (cropped off again).
        progress: show a bar over the windows (on stderr), or a string to label it.

    Returns:
        float32 (*spatial, K) blended predictions (probabilities if the model outputs them).
    """
    in_shape = tuple(model.input_shape[1:])
    spatial_dims = len(in_shape) - 1
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == spatial_dims:
        volume = volume[..., None]
    if volume.ndim != spatial_dims + 1 or volume.shape[-1] != in_shape[-1]:
        raise ValueError(f"`volume` must be {spatial_dims}-D (plus an optional channel axis of "
                         f"{in_shape[-1]}) for model {model.name!r}. Received: shape {volume.shape}")
    if patch_size is None:
        patch_size = in_shape[:-1]
        if any(p is None for p in patch_size):
            raise ValueError(f"model {model.name!r} has no fixed input size; pass `patch_size`.")
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != spatial_dims or any(p < 1 for p in patch_size):
        raise ValueError(f"`patch_size` needs {spatial_dims} positive sizes. Received: {patch_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"`overlap` must be in [0, 1). Received: overlap={overlap}")
    if blend not in BLEND_MODES:
        raise ValueError(f"`blend` must be one of {BLEND_MODES}. Received: blend={blend!r}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("`volume` contains NaN or infinite values")
    flips = _flip_sets(tta, spatial_dims)

    original = volume.shape[:-1]
    pad = [(0, max(0, p - s)) for p, s in zip(patch_size, original)]
    if any(b for _, b in pad):
        volume = np.pad(volume, pad + [(0, 0)], constant_values=pad_value)
    shape = volume.shape[:-1]
    weight = gaussian_importance(patch_size) if blend == "gaussian" else np.ones(patch_size, np.float32)
    starts = list(itertools.product(*[window_starts(s, p, overlap) for s, p in zip(shape, patch_size)]))
    acc, norm = None, np.zeros(shape, np.float32)

    bar = _progress(total=len(starts), desc=progress if isinstance(progress, str) else "windows",
                    disable=not progress, unit="window")
    forward = _window_forward(model)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in chunk]
        batch = np.stack([volume[sl] for sl in slices])
        pred = 0.0
        for axes in flips:
            ax = tuple(a + 1 for a in axes)
            out = np.asarray(forward(np.flip(batch, ax) if ax else batch), dtype=np.float32)
            pred = pred + (np.flip(out, ax) if ax else out)
        pred = pred / len(flips)
        if acc is None:
            acc = np.zeros(shape + (pred.shape[-1],), np.float32)
        for sl, p in zip(slices, pred):
            acc[sl] += p * weight[..., None]
            norm[sl] += weight
        bar.update(len(chunk))
    bar.close()
    out = acc / norm[..., None]
    return out[tuple(slice(0, s) for s in original)]


__all__ = ["gaussian_importance", "sliding_window_predict", "window_starts"]
