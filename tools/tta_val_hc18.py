"""Compares test-time augmentations for a finished HC18 run on its validation fetuses (the ones to
choose settings on), with the challenge's measures at each scan's own size (probabilities resized
before thresholding, the largest region, sub-pixel ellipse): none, `flip` (the left-right mirror;
what `evaluation.tta: flip` and `tlunet export --tta flip` do), `flips` (the four left-right and
up-down mirrors) and `flip+rotate` (flip, and each of the image and its mirror rotated by -10 and
+10 degrees and the probabilities rotated back, each counted only where the rotated image covers
the scan). Only `flip` is built into tlunet's runners and export; the others are here to ask
whether more would help.

    python tools/tta_val_hc18.py results/wang2023_fetal_head/scratch-ensemble ../shared/data/hc18
"""

import argparse
import os
import sys

import numpy as np
import yaml


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder of an HC18 image experiment (config.yaml, model.keras)")
    parser.add_argument("hc18", help="the HC18 folder the run was trained on (or sample:hc18_small, or download)")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="which of the run's fetuses to score: val to choose on (default), test for the end")
    args = parser.parse_args()
    for name in ("config.yaml", "model.keras"):
        if not os.path.isfile(os.path.join(args.run, name)):
            sys.exit(f"{args.run}: no {name}; give a finished run folder of an HC18 experiment")
    with open(os.path.join(args.run, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict) or (cfg.get("data") or {}).get("kind") != "hc18":
        sys.exit(f"{args.run}/config.yaml: not a run on HC18 (data.kind: hc18)")
    if cfg["data"].get("limit") or (cfg.get("sweep") or {}).get("folds"):
        sys.exit(f"{args.run}/config.yaml: data.limit or sweep.folds is set; this tool rebuilds the one split of a run "
                 "on every image")
    import keras
    from scipy import ndimage

    import tlunet  # noqa: F401  (registers tlunet's objects for load_model)
    from tlunet.biometry import challenge_measures
    from tlunet.data import DataError, experiment_splits
    from tlunet.data.hc18 import read_filled_annotation
    from tlunet.runners import ConfigError
    from tlunet.data.kinds import load_image_set
    from tlunet.resources import SAMPLE_PREFIX, sample_path

    root = args.hc18 if args.hc18 == "download" or args.hc18.startswith("sample:") else os.path.abspath(args.hc18)
    try:
        images, _, meta, groups, _ = load_image_set({**cfg["data"], "root": root},
                                                    sample_path(root) if root.startswith(SAMPLE_PREFIX) else root)
    except (DataError, ConfigError, OSError) as e:
        sys.exit(str(e) if args.hc18 in str(e) else f"{args.hc18}: {e}")
    _, val, test = experiment_splits(len(images), cfg["data"]["split"], cfg["seed"], groups, None)[0]
    chosen = val if args.split == "val" else test
    if not chosen:
        sys.exit(f"{args.run}/config.yaml: data.split {cfg['data']['split']} leaves no {args.split} fetuses")
    x = images[chosen].astype(np.float32) / 255.0
    model = keras.models.load_model(os.path.join(args.run, "model.keras"))
    if model.output_shape[-1] != 1:
        sys.exit(f"{args.run}/model.keras has {model.output_shape[-1]} output channels; the challenge's measures "
                 "are taken on a one-channel (head) model")

    def predict(a):
        return model.predict(a, batch_size=8, verbose=0)[..., 0]

    def rotate(a, degrees):  # (N, H, W[, C]) about the image centre, zeros outside
        return ndimage.rotate(a, degrees, axes=(1, 2), reshape=False, order=1, mode="constant")

    plain, mirror = predict(x), predict(x[:, :, ::-1])[:, :, ::-1]
    flips = [plain, mirror, predict(x[:, ::-1])[:, ::-1], predict(x[:, ::-1, ::-1])[:, ::-1, ::-1]]
    total, weight = plain + mirror, np.full(plain.shape, 2.0)
    for d in (-10, 10):  # each rotated prediction counts only where the rotated image covers the scan
        covered = rotate(rotate(np.ones_like(plain), d), -d) > 0.5
        rotated = rotate(x, d)
        total += rotate(predict(rotated), -d) * covered
        total += rotate(predict(rotated[:, :, ::-1])[:, :, ::-1], -d) * covered  # and its mirror
        weight += 2.0 * covered
    variants = {"none": plain, "flip": (plain + mirror) / 2, "flips": np.mean(flips, axis=0),
                "flip+rotate": total / weight}
    print(f"{len(chosen)} {args.split} images of {len({groups[i] for i in chosen})} fetuses, "
          f"challenge measures at the scans' own size:")
    print("| tta | ADF (mm) | median ADF | DF (mm) | Dice | worst Dice |\n|---|---:|---:|---:|---:|---:|")
    truths = [read_filled_annotation(meta[i]["annotation"]) for i in chosen]  # read once, scored four times
    threshold = (cfg.get("evaluation") or {}).get("threshold", 0.5)
    for name, probs in variants.items():
        c = [challenge_measures(p, truth, meta[i]["pixel_size"], meta[i]["hc_mm"], threshold)
             for p, truth, i in zip(probs, truths, chosen)]
        df = np.array([r["df_mm"] for r in c])
        dice = np.array([r["dice_full"] for r in c])
        missed = f" ({np.isnan(df).sum()} scans with no head, left out of ADF)" if np.isnan(df).any() else ""
        print(f"| {name} | {np.nanmean(np.abs(df)):.2f} | {np.nanmedian(np.abs(df)):.2f} | {np.nanmean(df):+.2f} | "
              f"{dice.mean():.4f} | {dice.min():.3f} |{missed}", flush=True)


if __name__ == "__main__":
    main()
