"""Fetal-head biometry: ellipse fitting and head circumference, the HC18 challenge measures."""

import math

import numpy as np
from scipy import ndimage
from skimage import measure

from tlunet.evaluation import dice, hausdorff
from tlunet.postprocess import PostProcess, largest_region


def ellipse_perimeter(a, b):
    """Ramanujan's first approximation of the perimeter of an ellipse with semi-axes a and b."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def fit_ellipse(points):
    """Least-squares ellipse through (row, col) points.

    Returns:
        dict with center (row, col), semi_axes (a, b) with a >= b in pixels, and angle (radians).
        None if fewer than 5 points or the fit fails.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 5:
        return None
    xy = points[:, ::-1]  # EllipseModel works in (x, y) = (col, row)
    with np.errstate(invalid="ignore", divide="ignore"):  # degenerate point sets: checked below
        if hasattr(measure.EllipseModel, "from_estimate"):  # scikit-image >= 0.26
            model = measure.EllipseModel.from_estimate(xy)
            if not model:
                return None
            (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
        else:
            model = measure.EllipseModel()
            if not model.estimate(xy):
                return None
            xc, yc, a, b, theta = model.params
    if not all(np.isfinite([xc, yc, a, b, theta])) or min(a, b) <= 0:
        return None
    if a < b:
        a, b, theta = b, a, theta + math.pi / 2
    return {"center": (yc, xc), "semi_axes": (a, b), "angle": theta}


def outline_points(mask):
    """Sub-pixel edge points (row, col) of the outer edge of the largest connected foreground
    component (holes filled).

    The edge is the 0.5 iso-contour, half-way between the last foreground and first background
    pixel centres; fitting to the foreground boundary pixels instead would shrink the ellipse by
    half a pixel.
    """
    largest = ndimage.binary_fill_holes(largest_component(mask))  # holes' edges are not the skull's
    if not largest.any():
        return np.zeros((0, 2))
    padded = np.pad(largest.astype(float), 1)  # closes contours at the image border
    contours = measure.find_contours(padded, 0.5)
    return np.concatenate(contours) - 1.0


def largest_component(mask):
    """The largest connected foreground component of a mask (bool, 8-connected); all False if there
    is none (`tlunet.postprocess.largest_region`)."""
    return largest_region(mask)


def mask_at_size(prob, size, threshold=0.5, largest=False):
    """A probability map (h, w) resized bilinearly to `size` (H, W), then thresholded (`>=`); with
    `largest`, only its largest connected region. The challenge's order: resize before threshold
    (`tlunet.postprocess.PostProcess.mask_at_size`).

    Raises:
        ValueError: `threshold` is not a number in (0, 1).
    """
    return PostProcess(threshold=threshold, largest_component=largest).mask_at_size(prob, size)


def head_circumference(mask, pixel_size):
    """Head circumference in mm of a filled head mask: ellipse fitted to the largest component's
    edge, Ramanujan perimeter, times the pixel size. NaN if no ellipse fits."""
    fit = fit_ellipse(outline_points(mask))
    if fit is None:
        return float("nan")
    return ellipse_perimeter(*fit["semi_axes"]) * pixel_size


def hc18_measures(pred_mask, true_mask, pixel_size):
    """The HC18 challenge's per-image measures.

    Returns:
        dict: hc_pred and hc_true (mm), df (pred - true, mm), adf (|df|, mm), dice, hausdorff (mm).
    """
    hc_pred = head_circumference(pred_mask, pixel_size)
    hc_true = head_circumference(true_mask, pixel_size)
    df = hc_pred - hc_true
    return {"hc_pred": hc_pred, "hc_true": hc_true, "df": df, "adf": abs(df),
            "dice": dice(pred_mask, true_mask),
            "hausdorff": hausdorff(pred_mask, true_mask, spacing=(pixel_size, pixel_size))}


def challenge_measures(prob, true_mask, pixel_size, hc_true, threshold=0.5):
    """The HC18 challenge's measures of one image, taken the way the challenge takes them.

    The probability map (any size) is resized bilinearly to the original scan's size before it is
    thresholded; the largest component is kept; an ellipse is fitted to its sub-pixel edge and its
    perimeter times the pixel size is the HC.

    Args:
        prob: float (h, w) foreground probabilities at the model's size.
        true_mask: the full-size filled reference ellipse (H, W).
        pixel_size: mm per pixel (the CSV's).
        hc_true: the reference HC in mm (the CSV's).

    Returns:
        dict: hc_pred_mm, hc_true_mm, df_mm (pred - true), adf_mm (|df|), dice_full (Dice at full
        size), hausdorff_mm (symmetric, between the outlines); and "mask", the full-size prediction.
    """
    pred = mask_at_size(prob, np.asarray(true_mask).shape[:2], threshold, largest=True)
    truth = np.asarray(true_mask) > 0
    hc_pred = head_circumference(pred, pixel_size) if pred.any() else float("nan")
    df = hc_pred - hc_true
    return {"hc_pred_mm": hc_pred, "hc_true_mm": float(hc_true), "df_mm": df, "adf_mm": abs(df),
            "dice_full": dice(pred, truth), "hausdorff_mm": hausdorff(pred, truth, spacing=(pixel_size, pixel_size)),
            "mask": pred}
