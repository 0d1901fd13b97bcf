"""Tests finished image runs again with their BatchNorm statistics recomputed (`training.precise_bn`),
for runs made before that setting existed. For each run folder it rebuilds the run's split from its
config.yaml (fold included), loads its `model.keras`, prints the test Dice with the saved statistics
and with the average batch statistics of its training images under the same weights
(`tlunet.train.precise_bn`, shuffled batches of the run's batch size, no augmentation), using the run's evaluation
settings. With `--out`, the recalibrated models are written there as runs (config.yaml, which says
so, and model.keras).

For a run trained from scratch this is what `training.precise_bn: true` gives for the same trained
weights. For a run started from a pretrain source it is not quite: that setting also recomputes the
source's statistics before fine-tuning. Runs of several stages are refused: recomputing after
training reaches only the layers the last stage trained (`training.precise_bn` recomputes at the
end of each stage).

    python tools/precise_bn_runs.py results/wang2020_covid_ct_2d/scratch-fold* --data ../shared/data/covid_ct_slices
"""

import argparse
import os
import sys

import numpy as np
import yaml


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run folders of one image experiment (config.yaml, model.keras)")
    parser.add_argument("--data", help="the data folder the runs were trained on (default: their config's data.root)")
    parser.add_argument("--out", help="write each recalibrated model to OUT/<run name>/ (config.yaml, model.keras)")
    args = parser.parse_args()
    import keras

    from tlunet.data import experiment_splits
    from tlunet.data.pipeline import make_dataset
    from tlunet.data.kinds import load_image_set
    from tlunet.postprocess import PostProcess
    from tlunet.resources import SAMPLE_PREFIX, sample_path
    from tlunet.scoring import evaluate_cases
    from tlunet.training import precise_bn

    loaded, results = {}, []
    for run in args.runs:
        for name in ("config.yaml", "model.keras", "done.json"):
            if not os.path.isfile(os.path.join(run, name)):
                sys.exit(f"{run}: no {name}; give finished run folders of an image experiment")
        with open(os.path.join(run, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict) or cfg.get("task", "image") != "image" or "image_size" not in cfg.get("data", {}):
            sys.exit(f"{run}: not a run of an image experiment (task: image); volume runs are not rebuilt by this tool")
        if len((cfg.get("run") or {}).get("stages") or []) > 1:
            sys.exit(f"{run}: a run of several stages; recomputing now would reach only the layers its last stage "
                     "trained (a layer frozen later keeps its lagging statistics): rerun it with training.precise_bn, "
                     "which recomputes them at the end of each stage")
        if cfg.get("fraction", 1) != 1 or cfg.get("data", {}).get("limit") or "ensemble" in cfg:
            sys.exit(f"{run}: a training fraction below 1, data.limit or an ensemble is not rebuilt by this tool")
        data = {**cfg["data"], **({"root": os.path.abspath(args.data)} if args.data else {})}
        key = yaml.safe_dump(data)
        if key not in loaded:
            root = data.get("root")
            loaded[key] = load_image_set(data, sample_path(root) if str(root).startswith(SAMPLE_PREFIX) else root)
        images, masks, meta, groups, _ = loaded[key]
        fold = cfg.get("fold") or 0
        train, _, test = experiment_splits(len(images), cfg["data"]["split"], cfg["seed"], groups,
                                           (cfg.get("sweep") or {}).get("folds"))[fold]
        if len(train) != cfg.get("n_train") or len(test) != cfg.get("n_test"):
            sys.exit(f"{run}: the rebuilt split ({len(train)} train / {len(test)} test) is not the run's "
                     f"({cfg.get('n_train')} / {cfg.get('n_test')}); is --data the folder it was trained on?")
        post = PostProcess.from_config(cfg.get("evaluation") or {}, where=os.path.join(run, "config.yaml"))

        def test_dice(model):
            rows, _ = evaluate_cases(model, images[test], masks[test], [meta[i] for i in test], post)
            return float(np.mean([r["dice"] for r in rows]))

        model = keras.models.load_model(os.path.join(run, "model.keras"))
        before = test_dice(model)
        layers, batches = precise_bn(model, make_dataset(images[train], masks[train], cfg["training"]["batch_size"],
                                                         seed=cfg.get("run_seed", cfg.get("seed")) or 0))
        after = test_dice(model)
        results.append((before, after))
        print(f"{os.path.basename(os.path.normpath(run))}: test Dice {before:.3f} with its saved BatchNorm statistics, "
              f"{after:.3f} recomputed ({layers} layers, {batches} batches of {len(train)} training images; "
              f"{len(test)} test)", flush=True)
        if args.out:
            target = os.path.join(args.out, os.path.basename(os.path.normpath(run)))
            os.makedirs(target, exist_ok=True)
            note = {**cfg, "training": {**cfg["training"], "precise_bn": True},
                    "precise_bn_recomputed_by": "tools/precise_bn_runs.py, after training"}
            with open(os.path.join(target, "config.yaml"), "w") as f:
                yaml.safe_dump(note, f, sort_keys=False)
            model.save(os.path.join(target, "model.keras"))
    if len(results) > 1:
        before, after = np.array(results).T
        print(f"mean over the {len(results)} runs (± population sd): {before.mean():.3f} ± {before.std():.3f} saved, "
              f"{after.mean():.3f} ± {after.std():.3f} recomputed")


if __name__ == "__main__":
    main()
