"""Scores a finished HC18 run's test fetuses the way a deployed model meets them: the run's
`model.keras` goes through `tlunet export`, and the SavedModel's `serve` endpoint segments each
full-size scan; the mask is `serve(...) >= 0.5`, nothing else. The export is `tlunet export`'s
default for a run folder: with the run's `evaluation.tta` and `evaluation.largest_component` built
in (flip and the largest region for the `cpu` profile); `--tta none` and `--no-largest-component`
score the bare model. Dice and Hausdorff against the filled annotation at full size, HC (DF,
ADF) from the mask with the CSV's pixel size. The split is rebuilt from the run's config.yaml: the
test fetuses by default, `--split val` for the validation fetuses (the ones to choose settings on).

    python tools/exported_test_hc18.py results/wang2023_fetal_head/scratch ../shared/data/hc18
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import yaml


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder (config.yaml, model.keras)")
    parser.add_argument("hc18", help="the HC18 folder the run was trained on")
    parser.add_argument("--tta", choices=["none", "flip"], help="passed to tlunet export (default: the run's)")
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                        help="passed to tlunet export (default: the run's)")
    parser.add_argument("--split", choices=["val", "test"], default="test",
                        help="which of the run's fetuses to score: val to choose on, test for the end (default: test)")
    args = parser.parse_args()
    import tensorflow as tf

    from tlunet.biometry import head_circumference
    from tlunet.data import experiment_splits
    from tlunet.data.hc18 import find_hc18, load_hc18_record
    from tlunet.evaluation import dice, hausdorff

    with open(os.path.join(args.run, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    if cfg.get("data", {}).get("limit") or (cfg.get("sweep") or {}).get("folds"):
        sys.exit(f"{args.run}/config.yaml: data.limit or sweep.folds is set; this tool rebuilds the one split of a run "
                 "on every image (no limit, no folds)")
    records = find_hc18(args.hc18)
    groups = [r.subject for r in records]
    _, val, test = experiment_splits(len(records), cfg["data"]["split"], cfg["seed"], groups, None)[0]
    chosen = val if args.split == "val" else test
    if not chosen:
        sys.exit(f"{args.run}/config.yaml: data.split {cfg['data']['split']} leaves no {args.split} fetuses "
                 "(a run refit on training + validation has no validation set)")
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        tlunet_cli = os.path.join(os.path.dirname(sys.executable), "tlunet")
        done = subprocess.run([tlunet_cli, "export", os.path.join(args.run, "model.keras"), saved,
                               *(["--tta", args.tta] if args.tta else []),
                               *([] if args.largest_component is None else
                                 ["--largest-component" if args.largest_component else "--no-largest-component"])],
                              check=True, capture_output=True, text=True)
        print(done.stdout.strip().split(" Endpoints:")[0])
        served = tf.saved_model.load(saved)
        rows = []
        for i in chosen:
            r = records[i]
            image, truth = load_hc18_record(r)
            pred = served.serve(tf.constant(image[None])).numpy()[0, ..., 0] >= 0.5
            hc = head_circumference(pred, r.pixel_size) if pred.any() else np.nan
            rows.append((dice(pred, truth > 0), hc - r.hc_mm,
                         hausdorff(pred, truth > 0, spacing=(r.pixel_size, r.pixel_size))))
    d, df, hd = (np.array(v, float) for v in zip(*rows))
    print(f"{len(chosen)} {args.split} images of {len({groups[i] for i in chosen})} fetuses via `tlunet export` (serve >= 0.5):")
    print(f"  Dice {d.mean():.4f} (median {np.median(d):.4f}, min {d.min():.4f}); ADF {np.nanmean(np.abs(df)):.2f} mm "
          f"(median {np.nanmedian(np.abs(df)):.2f}); DF {np.nanmean(df):+.2f} mm; Hausdorff {np.nanmean(hd):.2f} mm")


if __name__ == "__main__":
    main()
