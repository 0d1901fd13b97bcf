"""Per-case scores of a 2D segmentation model on labelled images: the rows of a run's metrics.csv
and of `tlunet evaluate`."""

import numpy as np

from tlunet import evaluation as ev
from tlunet.biometry import challenge_measures, head_circumference, mask_at_size
from tlunet.data.hc18 import read_filled_annotation


def evaluate_cases(model, images, masks, meta, post, batch_size=8, full_size=None):
    """Per-case Dice and IoU of the foreground (mean over foreground classes for multi-class models;
    mIoU also averages the background), pixel accuracy, and HC error in mm where the case has a
    pixel size and a reference HC (HC18).

    HC18 cases whose meta names their full-size annotation also get the challenge's measures at the
    scan's own size (`tlunet.biometry.challenge_measures`): DF and ADF in mm, Dice at full size and
    Hausdorff in mm; their full-size predicted masks go into `full_size` if a list is given. Those
    measures always keep the largest region (the challenge's definition); `post.largest_component`
    keeps it for the other measures too (`evaluation.largest_component`).

    Args:
        model: a 2D Keras model taking float images in [0, 1].
        images: uint8 images (N, H, W, C) at the model's input size.
        masks: label maps (N, H, W).
        meta: one dict per case: "name" (or "stem"), and for HC18 "pixel_size", "hc_mm" and
            "annotation" or "original_size".
        post: the `tlunet.postprocess.PostProcess` (threshold, flip TTA, largest region).
        batch_size: images per forward pass.
        full_size: a list to which the full-size HC18 masks are appended, or None.

    Returns:
        (rows, label maps): one dict per case ("case", "dice", "miou", "pixel_accuracy", and the HC
        measures where they apply), and the predicted label maps (N, H, W).
    """
    probs, labels = post.predict(model, images.astype(np.float32) / 255.0, batch_size)
    classes = max(2, probs.shape[-1])
    rows = []
    for prob, pred, true, m in zip(probs, labels, masks, meta):
        present = [c for c in range(1, classes) if (true == c).any() or (pred == c).any()] or [1]
        row = {"case": m.get("name", m.get("stem", "")),
               "dice": float(np.mean([ev.dice(pred == c, true == c) for c in present])),
               "miou": float(np.mean([ev.iou(pred == c, true == c) for c in [0, *present]])),
               "pixel_accuracy": ev.pixel_accuracy(pred, true)}
        if "pixel_size" in m and "hc_mm" in m and "annotation" in m and classes == 2:
            c = challenge_measures(prob[..., 0], read_filled_annotation(m["annotation"]), m["pixel_size"], m["hc_mm"],
                                   post.threshold)
            if full_size is not None:
                full_size.append(c["mask"])
            row.update({k: v for k, v in c.items() if k != "mask"}, hc_abs_error_mm=c["adf_mm"])
        elif "pixel_size" in m and "hc_mm" in m and classes == 2:
            hc = head_circumference(mask_at_size(prob[..., 0], m["original_size"], post.threshold), m["pixel_size"])
            row.update(hc_pred_mm=hc, hc_true_mm=m["hc_mm"], hc_abs_error_mm=abs(hc - m["hc_mm"]))
        rows.append(row)
    return rows, labels
