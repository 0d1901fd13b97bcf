"""Segmentation measures on arrays (2D or 3D), with physical voxel spacing.

Which definition each measure follows:

- Dice, IoU, pixel accuracy: voxel counts.
- Normalised surface Dice, Hausdorff, HD95, ASSD (and `surface_distances`): surface elements, as in
  DeepMind's `surface-distance` (Nikolov et al. 2021), which challenges and MONAI's sub-voxel
  surface Dice follow. The surface is the marching-squares contour (2D) or marching-cubes surface
  (3D) of the mask: one surface element per 2x2 (2x2x2) neighbourhood of voxels that is neither
  all background nor all foreground, placed at the shared voxel corner, weighted by its contour
  length (surface area) in physical units. Distances run from each element to the nearest element of
  the other mask (Euclidean, in the units of `spacing`).

  * `normalized_surface_dice`: area of both surfaces lying within `tolerance` of the other surface,
    over the total area (`compute_surface_dice_at_tolerance`).
  * `hausdorff`: the largest distance in either direction (`compute_robust_hausdorff(.., 100)`).
  * `hd95`: the larger of the two directed area-weighted 95th percentiles
    (`compute_robust_hausdorff(.., 95)`).
  * `assd`: the area-weighted mean distance of both surfaces pooled (the two directed means of
    `compute_average_surface_distance`, weighted by the surfaces' areas).

- `*_voxels` variants: on boundary voxels (foreground voxels with a background face-neighbour),
  each counted once, as medpy and MONAI's Hausdorff/HD95/ASSD compute them. Any number of dimensions.

Conventions for empty masks: both empty -> Dice/IoU/NSD 1 and distances 0 (perfect agreement);
exactly one empty -> Dice/IoU/NSD 0 and distances inf.
"""

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata


def _as_bool(a, name):
    a = np.asarray(a)
    if a.dtype != bool:
        values = np.unique(a)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"`{name}` must be a binary mask (0/1 or bool); found values "
                             f"{values[:6].tolist()}. Threshold probabilities first.")
        a = a.astype(bool)
    return a


def _pair(pred, true):
    pred, true = _as_bool(pred, "pred"), _as_bool(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true shapes differ: {pred.shape} vs {true.shape}")
    return pred, true


def dice(pred, true):
    """Dice similarity coefficient 2|P∩T| / (|P| + |T|)."""
    pred, true = _pair(pred, true)
    total = pred.sum() + true.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, true).sum() / total)


def iou(pred, true):
    """Intersection over union (Jaccard index)."""
    pred, true = _pair(pred, true)
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


def pixel_accuracy(pred, true):
    """Fraction of pixels labelled correctly (binary or integer label maps)."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true shapes differ: {pred.shape} vs {true.shape}")
    return float(np.mean(pred == true))


def _spacing(spacing, ndim):
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in np.broadcast_to(spacing, (ndim,)))
    if any(s <= 0 for s in spacing):
        raise ValueError(f"`spacing` must be positive. Received: spacing={spacing}")
    return spacing


# ------------------------------------------------------------------- surface elements (reference)
# Neighbourhood codes: the corner shared by the voxels x + o, o in {0, 1}^ndim, gets bit
# sum_k o_k 2^(ndim-1-k) set when voxel x + o is foreground (2D: 4 bits, 3D: 8 bits).
def _offsets(ndim):
    return [tuple((bit >> (ndim - 1 - k)) & 1 for k in range(ndim)) for bit in range(2 ** ndim)]


@lru_cache(maxsize=None)
def _unit_triangle_normals():
    """Marching-cubes triangles of each 2x2x2 code at unit spacing, as (code, normal) arrays whose
    normal lengths are the triangle areas. Each configuration is triangulated as its side with at
    most four corners set (the classic Lorensen-Cline table, which DeepMind's table holds), so a code
    and its complement have the same surface."""
    from skimage.measure import marching_cubes
    offsets = _offsets(3)
    codes, normals = [], []
    for code in range(1, 255):
        side = code if bin(code).count("1") <= 4 else 255 - code
        cube = np.zeros((2, 2, 2))
        for bit, o in enumerate(offsets):
            cube[o] = (side >> bit) & 1
        verts, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen")
        tri = verts[faces].astype(np.float64)
        normals.append(0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
        codes.append(np.full(len(tri), code))
    return np.concatenate(codes), np.concatenate(normals)


@lru_cache(maxsize=64)
def _surfel_table(spacing):
    """Contour length (2D) or surface area (3D) of the surface element of each neighbourhood code."""
    if len(spacing) == 2:
        # Marching squares: one corner apart from the rest cuts a segment between two edge midpoints
        # (half the voxel diagonal); a pair of neighbours along one axis, a segment across the other
        # axis (one voxel long); two diagonal corners, two such half-diagonals.
        table = np.zeros(16)
        half_diag = 0.5 * np.hypot(*spacing)
        offsets = _offsets(2)
        for code in range(1, 15):
            side = [offsets[bit] for bit in range(4) if (code >> bit) & 1]
            if len(side) > 2:
                side = [offsets[bit] for bit in range(4) if not (code >> bit) & 1]
            if len(side) == 1:
                table[code] = half_diag
            elif side[0][0] == side[1][0]:      # same row: the contour runs along axis 1
                table[code] = spacing[1]
            elif side[0][1] == side[1][1]:      # same column: along axis 0
                table[code] = spacing[0]
            else:
                table[code] = 2 * half_diag
        return table
    codes, normals = _unit_triangle_normals()
    s0, s1, s2 = spacing
    areas = np.linalg.norm(normals * (s1 * s2, s0 * s2, s0 * s1), axis=1)
    return np.bincount(codes, weights=areas, minlength=256)


def _surfels(mask, box):
    """(neighbourhood codes, surface-element mask) on the corner grid of `box` (one corner more than
    voxels along each axis)."""
    padded = np.pad(mask[box], 1).astype(np.uint16)
    n = tuple(s - 1 for s in padded.shape)
    code = np.zeros(n, np.uint16)
    for bit, o in enumerate(_offsets(mask.ndim)):
        code |= padded[tuple(slice(k, k + m) for k, m in zip(o, n))] << bit
    full = 2 ** (2 ** mask.ndim) - 1
    return code, (code != 0) & (code != full)


class SurfaceDistances(NamedTuple):
    """Per surface element: distance to the other surface and its length (2D) or area (3D)."""

    pred_to_true: np.ndarray
    true_to_pred: np.ndarray
    pred_areas: np.ndarray
    true_areas: np.ndarray


def surface_distances(pred, true, spacing=None):
    """Surface elements of both masks with their distances to the other surface, by DeepMind's
    `compute_surface_distances` (see the module docstring). 2D or 3D masks.

    Returns:
        `SurfaceDistances(pred_to_true, true_to_pred, pred_areas, true_areas)`: 1-D arrays, each
        direction sorted by distance (then area) as in the reference; distances in the units of
        `spacing`, areas in its units squared (lengths in 2D). None if either mask is empty.
    """
    pred, true = _pair(pred, true)
    if pred.ndim not in (2, 3):
        raise ValueError(f"Surface elements are defined for 2D and 3D masks; got {pred.ndim}D. "
                         "The *_voxels measures take any number of dimensions.")
    if not pred.any() or not true.any():
        return None
    spacing = _spacing(spacing, pred.ndim)
    box = ndimage.find_objects((pred | true).view(np.uint8))[0]   # bounding box of both masks
    table = _surfel_table(spacing)
    (code_p, surf_p), (code_t, surf_t) = _surfels(pred, box), _surfels(true, box)
    to_true = ndimage.distance_transform_edt(~surf_t, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~surf_p, sampling=spacing)

    def ordered(dist, area):
        order = np.lexsort((area, dist))
        return dist[order], area[order]

    d_p, a_p = ordered(to_true[surf_p], table[code_p[surf_p]])
    d_t, a_t = ordered(to_pred[surf_t], table[code_t[surf_t]])
    return SurfaceDistances(d_p, d_t, a_p, a_t)


def _directed_percentile(dist, area, percent):
    """Area-weighted percentile as in `compute_robust_hausdorff` (`dist` sorted)."""
    cum = np.cumsum(area) / np.sum(area)
    return dist[min(int(np.searchsorted(cum, percent / 100.0)), len(dist) - 1)]


def _hausdorff(d):
    return max(d.pred_to_true[-1], d.true_to_pred[-1])


def _hd95(d):
    return max(_directed_percentile(d.pred_to_true, d.pred_areas, 95),
               _directed_percentile(d.true_to_pred, d.true_areas, 95))


def _assd(d):
    return ((d.pred_to_true @ d.pred_areas + d.true_to_pred @ d.true_areas)
            / (d.pred_areas.sum() + d.true_areas.sum()))


def _nsd(d, tolerance):
    return ((d.pred_areas[d.pred_to_true <= tolerance].sum() + d.true_areas[d.true_to_pred <= tolerance].sum())
            / (d.pred_areas.sum() + d.true_areas.sum()))


def _surface_measures(pred, true, spacing, reducers):
    """{name: value} for `reducers` {name: (reduce(SurfaceDistances), both empty, one empty)}, with
    the surface distances computed once."""
    pred, true = _pair(pred, true)
    if not pred.any() and not true.any():
        return {k: both for k, (_, both, _) in reducers.items()}
    d = surface_distances(pred, true, spacing)
    return {k: one if d is None else float(reduce(d)) for k, (reduce, _, one) in reducers.items()}


_INF = float("inf")


def hausdorff(pred, true, spacing=None):
    """Symmetric Hausdorff distance between the surfaces (surface elements; DeepMind's
    `compute_robust_hausdorff(.., 100)`)."""
    return _surface_measures(pred, true, spacing, {"v": (_hausdorff, 0.0, _INF)})["v"]


def hd95(pred, true, spacing=None):
    """Robust Hausdorff distance: the larger of the two directed area-weighted 95th percentiles of the
    surface distances (DeepMind's `compute_robust_hausdorff(.., 95)`)."""
    return _surface_measures(pred, true, spacing, {"v": (_hd95, 0.0, _INF)})["v"]


def assd(pred, true, spacing=None):
    """Average symmetric surface distance: area-weighted mean distance over both surfaces pooled."""
    return _surface_measures(pred, true, spacing, {"v": (_assd, 0.0, _INF)})["v"]


def normalized_surface_dice(pred, true, tolerance, spacing=None):
    """Normalised surface Dice (Nikolov et al. 2021): area of both surfaces within `tolerance` (units
    of `spacing`) of the other surface over the total area (DeepMind's
    `compute_surface_dice_at_tolerance`)."""
    return _surface_measures(pred, true, spacing, {"v": (lambda d: _nsd(d, tolerance), 1.0, 0.0)})["v"]


# ---------------------------------------------------------------------- boundary voxels (former)
def _border(mask):
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances_voxels(pred, true, spacing=None):
    """Distances from each boundary voxel of `pred` to the boundary voxels of `true`, and back
    (medpy's and MONAI's definition).

    Returns:
        (d_pred_to_true, d_true_to_pred) as 1-D arrays in the units of `spacing`, or None if either
        mask is empty.
    """
    pred, true = _pair(pred, true)
    if not pred.any() or not true.any():
        return None
    spacing = _spacing(spacing, pred.ndim)
    bp, bt = _border(pred), _border(true)
    to_true = ndimage.distance_transform_edt(~bt, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return to_true[bp], to_pred[bt]


def _voxel_measure(pred, true, spacing, reduce, both_empty=0.0, one_empty=float("inf")):
    pred, true = _pair(pred, true)
    if not pred.any() and not true.any():
        return both_empty
    d = surface_distances_voxels(pred, true, spacing)
    return one_empty if d is None else float(reduce(*d))


def hausdorff_voxels(pred, true, spacing=None):
    """Symmetric Hausdorff distance between the boundary voxels (medpy's hd)."""
    return _voxel_measure(pred, true, spacing, lambda a, b: max(a.max(), b.max()))


def hd95_voxels(pred, true, spacing=None):
    """95th percentile of the pooled boundary-voxel distances in both directions (medpy's hd95)."""
    return _voxel_measure(pred, true, spacing, lambda a, b: np.percentile(np.hstack([a, b]), 95))


def assd_voxels(pred, true, spacing=None):
    """Mean of the boundary-voxel distances of both directions pooled (medpy >= 0.5 and MONAI; older
    medpy averaged the two directed means instead)."""
    return _voxel_measure(pred, true, spacing, lambda a, b: np.hstack([a, b]).mean())


def normalized_surface_dice_voxels(pred, true, tolerance, spacing=None):
    """Fraction of boundary voxels of both masks lying within `tolerance` of the other boundary,
    each voxel counted once."""
    return _voxel_measure(pred, true, spacing, lambda a, b: (
        ((a <= tolerance).sum() + (b <= tolerance).sum()) / (len(a) + len(b))), both_empty=1.0, one_empty=0.0)


def evaluate(pred, true, spacing=None, tolerance=1.0):
    """All measures for one binary mask pair, as a dict (distances in `spacing` units; NSD and the
    distances by surface elements, computed once)."""
    out = {"dice": dice(pred, true), "iou": iou(pred, true),
           "pixel_accuracy": pixel_accuracy(_as_bool(pred, "pred"), _as_bool(true, "true"))}
    out.update(_surface_measures(pred, true, spacing, {
        "hausdorff": (_hausdorff, 0.0, _INF), "hd95": (_hd95, 0.0, _INF), "assd": (_assd, 0.0, _INF),
        "nsd": (lambda d: _nsd(d, tolerance), 1.0, 0.0)}))
    return out


# ------------------------------------------------------------------------------ classification
def _binary_auc(scores, positive):
    """Area under the ROC curve by the rank (Mann-Whitney) formula; ties count half."""
    pos = positive.sum()
    neg = len(positive) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def classification_metrics(y_true, probs, class_names=None):
    """Accuracy, balanced accuracy (the mean of the classes' recalls), per-class
    precision/recall/F1/support, macro F1, one-vs-rest macro AUC and the confusion matrix (rows:
    true class, columns: predicted).

    Args:
        y_true: (N,) integer labels.
        probs: (N, K) class probabilities.
        class_names: K names (default "0".."K-1").

    Returns:
        dict; a class absent from `y_true` gets NaN recall, F1 and AUC and is left out of the
        macro means (it cannot be found or missed).
    """
    y_true = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"`probs` must be (N, K) with N = len(y_true) = {len(y_true)}. Received: {probs.shape}")
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"labels must be in 0..{k - 1}. Received: {np.unique(y_true)}")
    pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), int)
    np.add.at(cm, (y_true, pred), 1)
    per_class, aucs = {}, []
    for i, name in enumerate(names):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        present = tp + fn > 0
        precision = tp / (tp + fp) if tp + fp else (float("nan") if not present else 0.0)
        recall = tp / (tp + fn) if present else float("nan")
        f1 = (2 * precision * recall / (precision + recall) if precision + recall else 0.0) if present else float("nan")
        auc = _binary_auc(probs[:, i], y_true == i)
        aucs.append(auc)
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "auc": auc, "support": int(cm[i].sum())}
    valid = [a for a in aucs if np.isfinite(a)]
    return {"accuracy": float(np.mean(pred == y_true)) if len(y_true) else float("nan"),
            "macro_f1": float(np.nanmean([c["f1"] for c in per_class.values()])) if len(y_true) else float("nan"),
            "balanced_accuracy": float(np.nanmean([c["recall"] for c in per_class.values()])) if len(y_true)
            else float("nan"),
            "macro_auc": float(np.mean(valid)) if valid else float("nan"),
            "per_class": per_class, "confusion": cm.tolist(), "class_names": names}


def majority_vote(probs, groups):
    """{group: predicted class} of frames' class probabilities `probs` (N, K) grouped by `groups`:
    the class most of the group's frames predict, ties broken by the higher mean probability."""
    probs, groups = np.asarray(probs, dtype=np.float64), list(groups)
    votes = {}
    for group in dict.fromkeys(groups):
        p = probs[[i for i, g in enumerate(groups) if g == group]]
        counts = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
        tied = np.flatnonzero(counts == counts.max())
        votes[group] = int(tied[np.argmax(p.mean(axis=0)[tied])])
    return votes
