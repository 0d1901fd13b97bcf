"""Scores a trained tlunet model on HC18 fetuses the bundled sample left out, the way a deployed
model meets them: the model is exported (`tlunet export`), and its `serve` endpoint segments each
full-size 800x540 scan; Dice is taken at full size against the filled annotation ellipse, HC from
the predicted mask with the CSV's pixel size.

    python tools/heldout_hc18.py results/wang2023_fetal_head/scratch/model.keras ../shared/data/hc18
"""

import argparse
import os
import tempfile

import numpy as np

from tlunet.biometry import head_circumference
from tlunet.data.hc18 import find_hc18, load_hc18_record
from tlunet.evaluation import dice


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file written by tlunet")
    parser.add_argument("hc18", help="HC18 root in the official layout (full size)")
    parser.add_argument("--sample", default=None, help="bundled sample whose fetuses are excluded (default hc18_small)")
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    import tlunet
    from tlunet.export import export_savedmodel
    bundled = {os.path.basename(r.image) for r in find_hc18(args.sample or tlunet.sample_path("hc18_small"))}
    bundled_subjects = {name.split("_")[0] for name in bundled}
    held = [r for r in find_hc18(args.hc18) if r.subject not in bundled_subjects]
    with tempfile.TemporaryDirectory() as tmp:
        served = tf.saved_model.load(export_savedmodel(keras.models.load_model(args.model), os.path.join(tmp, "sm")))
        dices, errors = [], []
        for r in held:
            image, truth = load_hc18_record(r)
            prob = served.serve(tf.constant(image[None])).numpy()[0, ..., 0]
            pred = prob >= 0.5
            dices.append(dice(pred, truth > 0))
            errors.append(head_circumference(pred, r.pixel_size) - r.hc_mm if pred.any() else np.nan)
    dices, errors = np.array(dices), np.array(errors)
    print(f"{len(held)} images of {len({r.subject for r in held})} held-out fetuses, full size, via the SavedModel:")
    print(f"  Dice mean {dices.mean():.4f}, median {np.median(dices):.4f}, min {dices.min():.4f}")
    print(f"  HC abs. error mean {np.nanmean(np.abs(errors)):.2f} mm, median {np.nanmedian(np.abs(errors)):.2f} mm, "
          f"bias {np.nanmean(errors):+.2f} mm")


if __name__ == "__main__":
    main()
