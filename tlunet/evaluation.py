"""Segmentation measures on arrays (2D or 3D), with physical voxel spacing.

Surface distances use the boundary voxels of each mask (foreground voxels with a background
face-neighbour) and Euclidean distance transforms in physical units — the definition of medpy and
MONAI. Conventions for empty masks: both empty -> Dice/IoU 1 and distances 0 (perfect agreement);
exactly one empty -> Dice/IoU 0 and distances inf.
"""

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


def _border(mask):
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(pred, true, spacing=None):
    """Distances from each boundary voxel of `pred` to the boundary of `true`, and back.

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


def _distance_measure(pred, true, spacing, reduce):
    pred, true = _pair(pred, true)
    if not pred.any() and not true.any():
        return 0.0
    d = surface_distances(pred, true, spacing)
    return float("inf") if d is None else float(reduce(*d))


def hausdorff(pred, true, spacing=None):
    """Symmetric Hausdorff distance between the mask boundaries."""
    return _distance_measure(pred, true, spacing, lambda a, b: max(a.max(), b.max()))


def hd95(pred, true, spacing=None):
    """95th percentile of the pooled boundary distances in both directions (medpy's hd95)."""
    return _distance_measure(pred, true, spacing, lambda a, b: np.percentile(np.hstack([a, b]), 95))


def assd(pred, true, spacing=None):
    """Average symmetric surface distance: mean of the boundary distances of both directions pooled
    (medpy >= 0.5 and MONAI; older medpy averaged the two directed means instead)."""
    return _distance_measure(pred, true, spacing, lambda a, b: np.hstack([a, b]).mean())


def normalized_surface_dice(pred, true, tolerance, spacing=None):
    """Fraction of boundary voxels of both masks lying within `tolerance` of the other boundary."""
    pred, true = _pair(pred, true)
    if not pred.any() and not true.any():
        return 1.0
    d = surface_distances(pred, true, spacing)
    if d is None:
        return 0.0
    a, b = d
    return float(((a <= tolerance).sum() + (b <= tolerance).sum()) / (len(a) + len(b)))


def evaluate(pred, true, spacing=None, tolerance=1.0):
    """All measures for one binary mask pair, as a dict (distances in `spacing` units)."""
    return {"dice": dice(pred, true), "iou": iou(pred, true),
            "pixel_accuracy": pixel_accuracy(_as_bool(pred, "pred"), _as_bool(true, "true")),
            "hausdorff": hausdorff(pred, true, spacing), "hd95": hd95(pred, true, spacing),
            "assd": assd(pred, true, spacing),
            "nsd": normalized_surface_dice(pred, true, tolerance, spacing)}


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
    """Accuracy, per-class precision/recall/F1/support, macro F1, one-vs-rest macro AUC and the
    confusion matrix (rows: true class, columns: predicted).

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
            "macro_auc": float(np.mean(valid)) if valid else float("nan"),
            "per_class": per_class, "confusion": cm.tolist(), "class_names": names}
