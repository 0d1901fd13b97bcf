"""Inference: 2D image batches with optional flip TTA (`predict_images`), and whole volumes with
sliding windows, overlap, Gaussian blending and flip TTA (`sliding_window_predict`).

A 3D model trained on patches segments volumes of any size: the volume is covered by windows of
the patch size, evenly spaced with at least `overlap` between neighbours; each window's prediction
is weighted by a Gaussian centred on the window (its centre is the most reliable, as in nnU-Net)
and the weighted predictions are averaged voxel by voxel.
"""

import itertools

import numpy as np

from tlunet.progress import progress as _progress

BLEND_MODES = ("gaussian", "constant")
IMAGE_TTA = (None, "flip")
# how a 2D run's test images are scored (a run config's `evaluation`; an old config without a key
# meant this default)
EVALUATION_DEFAULTS = {"tta": None, "threshold": 0.5, "largest_component": False}


class BadModelOutput(ValueError):
    """A model gave values that are not probabilities: NaN or infinite, or outside [0, 1]."""


def check_probabilities(probs, model):
    """`probs` if every value is a probability; else `BadModelOutput` naming the model and the values,
    so a broken model (one whose training diverged outputs NaN) is never scored or written out."""
    probs = np.asarray(probs)
    finite = np.isfinite(probs)
    if not finite.all():
        raise BadModelOutput(f"model {model.name!r} outputs NaN or infinite values ({(~finite).sum()} of {probs.size}): "
                             "its weights are broken, as after training that diverged (retrain it with a lower "
                             "learning rate)")
    low, high = (float(probs.min()), float(probs.max())) if probs.size else (0.0, 0.0)
    if low < -1e-6 or high > 1 + 1e-6:  # float round-off aside
        raise BadModelOutput(f"model {model.name!r} outputs values in [{low:.4g}, {high:.4g}], not probabilities in "
                             "[0, 1]: tlunet scores models that end in a sigmoid or softmax")
    return probs


def predict_images(model, x, batch_size=8, tta=None):
    """Probabilities of a 2D model on float images `x` (N, H, W, C) in [0, 1]; `tta="flip"`
    averages each image's and its left-right mirror's (as a run's `evaluation.tta: flip`).

    Raises:
        BadModelOutput: the model's outputs are not probabilities (`check_probabilities`).
    """
    if tta not in IMAGE_TTA:
        raise ValueError(f"tta must be None or 'flip'. Received: {tta!r}")
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    if tta == "flip":
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)[:, :, ::-1]) / 2
    return check_probabilities(probs, model)


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
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in chunk]
        batch = np.stack([volume[sl] for sl in slices])
        pred = 0.0
        for axes in flips:
            ax = tuple(a + 1 for a in axes)
            out = np.asarray(model.predict_on_batch(np.flip(batch, ax) if ax else batch), dtype=np.float32)
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
