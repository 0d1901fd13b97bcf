"""The 2D segmentation runner (`task: image`, the default): Wang 2023 and Cheng & Lam 2021.

For every run × training fraction × fold: build the model from the zoo (from the weights it names,
or from the experiment's pre-trained source), train through its stages, evaluate on the test
cases, and write the run folder (`tlunet.runners.results`); then one table with the paper's
numbers beside ours.
"""

import numbers
import os
import time

import keras
import numpy as np
import yaml

import tlunet
from tlunet import evaluation as ev
from tlunet.biometry import challenge_measures, head_circumference, largest_component as largest_region, mask_at_size
from tlunet.data import (SegmentationSet, experiment_splits, find_pairs, fraction_indices, hc18_set, load_arrays,
                         make_dataset, resize_pair, split_indices)
from tlunet.data.download import download_hc18
from tlunet.data.hc18 import read_filled_annotation
from tlunet.data.io import read_image
from tlunet.data.phantoms import lung_ultrasound
from tlunet.ensemble import ensemble_model, file_sha1
from tlunet.inference import EVALUATION_DEFAULTS, IMAGE_TTA, predict_images
from tlunet.plots import bland_altman, dice_vs_fraction, dice_vs_params, learning_curves, overlays
from tlunet.progress import EpochProgress
from tlunet.resources import SAMPLE_PREFIX, ConfigError
from tlunet.runners.config import (check_precise_bn, resolve_precise_bn, apply_profile, check_split_sizes, distribution_scope, check_keys, data_blocks, check_numbers, check_pretrain, check_runs, check_seeds, check_size,
                                   check_split, merge,
                                   resolve_path, skip_message, stages)
from tlunet.runners.results import (UNITS, paper_value, aggregate_folds, cached_source, finish_run, fmt, mean_sd, merged_history,
                                    open_experiment, read_done, start_run, summary_row, write_config, write_csv, write_tables)
from tlunet.train import compile_model, fit, run_stages, save_model, weights_digest
from tlunet.transfer import transfer_weights

DEFAULTS = {
    "seed": 0,
    "deterministic": False,
    "data": {"kind": "hc18", "image_size": [256, 256], "channels": 1, "split": [0.7, 0.15, 0.15],
             "augment": None, "limit": None},
    "model": {"name": "mobilenetv2_unet", "classes": 1},
    "training": {"epochs": 10, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice",
                 "patience": None, "mixed_precision": None, "jit_compile": False, "batchnorm": "follow",
                 "optimizer": "adam", "lr_schedule": None, "tensorboard": False, "distribute": None,
                 "gradient_accumulation": 1, "precise_bn": None},
    "sweep": {"fractions": [1.0], "folds": None, "seeds": None},
    "evaluation": {**EVALUATION_DEFAULTS, "ensemble": False},
    "runs": [],
}
TOP_KEYS = {"data", "model", "training", "sweep", "pretrain", "evaluation"}
DATA_KEYS = set(DEFAULTS["data"]) | {"root", "layout", "n", "phantom_size", "get"}
MEASURES = ("dice", "miou", "pixel_accuracy", "hc_abs_error_mm", "df_mm", "adf_mm", "dice_full", "hausdorff_mm")


def config_from_dict(raw, path, profile=None, overrides=None):
    """DEFAULTS, the config, its profile and overrides, checked."""
    cfg = apply_profile(raw, path, DEFAULTS, profile, overrides)
    check_keys(cfg, path, TOP_KEYS, {"data": (cfg["data"], DATA_KEYS),
                                     "training": (cfg["training"], DEFAULTS["training"]),
                                     "sweep": (cfg["sweep"], DEFAULTS["sweep"]),
                                     "evaluation": (cfg["evaluation"], DEFAULTS["evaluation"])})
    if cfg["evaluation"]["tta"] not in IMAGE_TTA:
        raise ConfigError(f"{path}: evaluation.tta must be one of {list(IMAGE_TTA)}. Received: {cfg['evaluation']['tta']!r}")
    if not isinstance(cfg["evaluation"]["largest_component"], bool):
        raise ConfigError(f"{path}: evaluation.largest_component must be true or false. "
                          f"Received: {cfg['evaluation']['largest_component']!r}")
    for run in cfg["runs"] if cfg["evaluation"]["largest_component"] else []:
        classes = merge(cfg["model"], run.get("model") if isinstance(run, dict) else None).get("classes", 1)
        if classes != 1:
            raise ConfigError(f"{path}: evaluation.largest_component keeps one region of a one-class model; "
                              f"run {run.get('name')!r} has model.classes {classes!r}")
    threshold = cfg["evaluation"]["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold < 1:
        raise ConfigError(f"{path}: evaluation.threshold must be a number in (0, 1). Received: {threshold!r}")
    check_seeds(path, cfg["sweep"]["seeds"])
    if not isinstance(cfg["evaluation"]["ensemble"], bool):
        raise ConfigError(f"{path}: evaluation.ensemble must be true or false. Received: {cfg['evaluation']['ensemble']!r}")
    if cfg["evaluation"]["ensemble"] and len(cfg["sweep"]["seeds"] or []) < 2:
        raise ConfigError(f"{path}: evaluation.ensemble averages the models of the sweep's seeds; give two or more "
                          f"in sweep.seeds (e.g. [0, 1, 2]). Received: sweep.seeds {cfg['sweep']['seeds']!r}")
    check_numbers(path, cfg["training"], "training", positive_ints=("epochs", "batch_size", "gradient_accumulation"),
                  positive_numbers=("learning_rate",), optional_ints=("patience",))
    check_size(path, "data.image_size", cfg["data"]["image_size"], 2)
    check_split(path, "data.split", cfg["data"]["split"])
    check_pretrain(cfg, path, DATA_KEYS, DEFAULTS["training"])
    resolve_precise_bn(cfg)
    check_precise_bn(path, cfg)
    folds, fractions = cfg["sweep"]["folds"], cfg["sweep"]["fractions"]
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ConfigError(f"{path}: sweep.folds must be a whole number >= 2, or null. Received: {folds!r}")
    if not isinstance(fractions, list) or not fractions or \
            not all(isinstance(f, numbers.Real) and 0 < f <= 1 for f in fractions):
        raise ConfigError(f"{path}: sweep.fractions must be a list of fractions in (0, 1]. Received: {fractions!r}")
    check_runs(cfg, path)
    for block, d in [("data", cfg["data"])] + ([("pretrain.data", cfg["pretrain"].get("data", {}))]
                                               if "pretrain" in cfg else []):
        if "kind" in d and d["kind"] not in DATA_KINDS:
            raise ConfigError(f"{path}: {block}.kind {d['kind']!r} is not one of {sorted(DATA_KINDS)}")
    for block, d in data_blocks(cfg).items():
        if d["kind"] in FOLDER_KINDS and "root" not in d:
            raise ConfigError(f"{path}: {block}.root is missing: kind {d['kind']} reads a folder "
                              f"(pass --data FOLDER or --set {block}.root=FOLDER)")
    for run in cfg["runs"]:
        if run.get("init") == "pretrain" and "pretrain" not in cfg:
            raise ConfigError(f"{path}: run {run.get('name')!r} has init: pretrain but no `pretrain` block")
    return cfg


# ----------------------------------------------------------------------------------------- data
def _data_hc18(cfg, d):
    root = resolve_path(cfg, d["root"])
    if root == "download":  # the official files from Zenodo, once, MD5-checked
        root = download_hc18()
    data = hc18_set(root)
    source = f"HC18 bundled sample `{d['root'][len(SAMPLE_PREFIX):]}`" if str(d["root"]).startswith(SAMPLE_PREFIX) \
        else f"HC18 ({root})"
    return data, [m["subject"] for m in data.meta], source


def _data_pairs(cfg, d):
    root = resolve_path(cfg, d["root"])
    data = find_pairs(root, d.get("layout", "generic"))
    return data, [m["stem"] for m in data.meta], root


def _data_lung_us_phantom(cfg, d):
    """SYNTHETIC lung-ultrasound frames with rib masks, generated in memory."""
    frames = [lung_ultrasound(tuple(d.get("phantom_size", [256, 256])), n_b_lines=i % 4,
                              pleural_irregularity=(i % 3) / 2, seed=cfg["seed"] * 1000 + i)
              for i in range(d.get("n", 60))]
    names = [f"phantom_{i:03d}" for i in range(len(frames))]
    data = SegmentationSet(names, names, [{"name": n} for n in names],
                           arrays=(np.stack([f["image"][..., None] for f in frames]),
                                   np.stack([f["rib_mask"] for f in frames])))
    return data, list(range(len(frames))), "synthetic lung-ultrasound phantom"  # one frame per "subject"


DATA_KINDS = {"hc18": _data_hc18, "pairs": _data_pairs, "lung_us_phantom": _data_lung_us_phantom}
FOLDER_KINDS = ("hc18", "pairs")  # the kinds that read a data folder (`tlunet train --kind`)


def load_data(cfg, d):
    """(images uint8 (N, H, W, C), masks uint8 (N, H, W), meta, groups, source description) of a
    data block, resized to `d["image_size"]` and cut to the first `d["limit"]` cases if set."""
    data, groups, source = DATA_KINDS[d["kind"]](cfg, d)
    if d.get("limit"):
        keep = list(range(min(d["limit"], len(data))))
        data, groups = data.subset(keep), [groups[i] for i in keep]
    size = tuple(d["image_size"])
    if data.arrays is not None:
        pairs = [resize_pair(i, m, size) for i, m in zip(*data.arrays)]
        images, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        for meta, image in zip(data.meta, data.arrays[0]):
            meta["original_size"] = image.shape[:2]
    else:
        images, masks = load_arrays(data, size, channels=d["channels"])
    return images, masks, data.meta, groups, source


def run_split(saved, groups):
    """{"train", "val", "test": case indices} of the run whose config.yaml is `saved`, over cases
    loaded by its data block (`groups` their subjects): the split `run` drew for its fold, the
    training part cut to its fraction as `run` cut it."""
    sweep = saved.get("sweep") or {}
    train, val, test = experiment_splits(len(groups), saved["data"]["split"], saved.get("seed", 0), groups,
                                         sweep.get("folds"))[saved.get("fold") or 0]
    fraction = saved.get("fraction", 1.0) or 1.0
    if fraction < 1:  # `run` draws the fraction with the repeat's seed, or the config's without repeats
        seed = saved.get("run_seed", 0) if sweep.get("seeds") else saved.get("seed", 0)
        train = fraction_indices(train, fraction, seed=seed, groups=groups)
    return {"train": list(train), "val": list(val), "test": list(test)}


# --------------------------------------------------------------------------------- evaluation
def predict_labels(model, images, threshold=0.5, batch_size=8, tta=None, largest_component=False):
    """(probabilities, label maps): thresholded foreground for one output channel, argmax for several.
    `tta="flip"` averages the probabilities of each image and of its left-right mirror;
    `largest_component` keeps only the largest connected region of each foreground (one channel)."""
    probs = predict_images(model, images.astype(np.float32) / 255.0, batch_size, tta)
    labels = (probs[..., 0] >= threshold).astype(np.uint8) if probs.shape[-1] == 1 else np.argmax(probs, -1)
    if largest_component:
        if probs.shape[-1] != 1:
            raise ValueError(f"largest_component keeps one region of a one-channel model; this one has {probs.shape[-1]}")
        labels = np.stack([largest_region(m) for m in labels]).astype(np.uint8)
    return probs, labels


def evaluate_cases(model, images, masks, meta, threshold=0.5, batch_size=8, tta=None, full_size=None,
                   largest_component=False):
    """Per-case Dice and IoU of the foreground (mean over foreground classes for multi-class models;
    mIoU also averages the background), pixel accuracy, and HC error in mm where the case has a
    pixel size and a reference HC (HC18).

    HC18 cases whose meta names their full-size annotation also get the challenge's measures at the
    scan's own size (`tlunet.biometry.challenge_measures`): DF and ADF in mm, Dice at full size and
    Hausdorff in mm; their full-size predicted masks go into `full_size` if a list is given. Those
    measures always keep the largest region (the challenge's definition); `largest_component` keeps
    it for the other measures too (`evaluation.largest_component`).
    Returns (rows, label maps)."""
    probs, labels = predict_labels(model, images, threshold, batch_size, tta, largest_component)
    classes = max(2, probs.shape[-1])
    rows = []
    for prob, pred, true, m in zip(probs, labels, masks, meta):
        present = [c for c in range(1, classes) if (true == c).any() or (pred == c).any()] or [1]
        row = {"case": m.get("name", m.get("stem", "")),
               "dice": float(np.mean([ev.dice(pred == c, true == c) for c in present])),
               "miou": float(np.mean([ev.iou(pred == c, true == c) for c in [0, *present]])),
               "pixel_accuracy": ev.pixel_accuracy(pred, true)}
        if "pixel_size" in m and "hc_mm" in m and "annotation" in m and classes == 2:
            c = challenge_measures(prob[..., 0], read_filled_annotation(m["annotation"]), m["pixel_size"], m["hc_mm"], threshold)
            if full_size is not None:
                full_size.append(c["mask"])
            row.update({k: v for k, v in c.items() if k != "mask"}, hc_abs_error_mm=c["adf_mm"])
        elif "pixel_size" in m and "hc_mm" in m and classes == 2:
            hc = head_circumference(mask_at_size(prob[..., 0], m["original_size"], threshold), m["pixel_size"])
            row.update(hc_pred_mm=hc, hc_true_mm=m["hc_mm"], hc_abs_error_mm=abs(hc - m["hc_mm"]))
        rows.append(row)
    return rows, labels


# ------------------------------------------------------------------------------------- runner
def _build(cfg, mcfg, weights):
    shape = (*cfg["data"]["image_size"], cfg["data"]["channels"])
    kwargs = {k: v for k, v in mcfg.items() if k not in ("name", "encoder_weights")}
    return tlunet.build_model(mcfg["name"], input_shape=shape, encoder_weights=weights, **kwargs)


def pretrain(cfg, exp_dir, verbose=0, log=print):
    """The source model of `init: pretrain` runs (e.g. X-Unet on grey salient-object images), trained once."""
    p = merge({"data": cfg["data"], "model": cfg["model"], "training": cfg["training"]}, cfg["pretrain"])

    def train():
        images, masks, _, groups, source = load_data(cfg, p["data"])
        train_idx, val_idx = split_indices(len(images), (0.9, 0.1), seed=cfg["seed"], groups=groups)
        t = p["training"]
        with distribution_scope(cfg):
            model = tlunet.build_model(p["model"]["name"], input_shape=(*p["data"]["image_size"], p["data"]["channels"]),
                                       **{k: v for k, v in p["model"].items() if k != "name"})
            compile_model(model, loss=t["loss"], learning_rate=t["learning_rate"], optimizer=t["optimizer"],
                          gradient_accumulation=t["gradient_accumulation"])
            history = fit(model, make_dataset(images[train_idx], masks[train_idx], t["batch_size"], p["data"].get("augment"),
                                              seed=cfg["seed"]),
                          make_dataset(images[val_idx], masks[val_idx], t["batch_size"], shuffle=False),
                          run_dir=os.path.join(exp_dir, "pretrain"), epochs=t["epochs"], verbose=verbose,
                          lr_schedule=t.get("lr_schedule"), tensorboard=t["tensorboard"],
                          callbacks=[EpochProgress("source (pre-training)", t["epochs"], disable=bool(verbose))],
                          recompute_bn=t["precise_bn"],
                          bn_data=make_dataset(images[train_idx], masks[train_idx], t["batch_size"], seed=cfg["seed"]))
        return model, {"source": source, "images": len(images), "epochs": len(history.get("loss", [])),
                       "val_dice": history.get("val_dice", [float("nan")])[-1],
                       "name": p["data"].get("layout") or p["data"]["kind"]}

    model, info = cached_source(os.path.join(exp_dir, "pretrain"), train,
                                settings={"seed": cfg["seed"], **p}, defaults={k: DEFAULTS[k] for k in ("seed", "data", "model", "training")})
    log(f"[{cfg['name']}] source model: {p['model']['name']} pre-trained on {info['source']} ({info['images']} images, "
        f"{info['epochs']} epochs, final val Dice {info['val_dice']:.3f})")
    return model, info


def run(cfg, out_dir="results", verbose=0, log=print):
    """Runs every (run, training fraction, fold) of an image config; returns the summary rows."""
    ready, skipped, exp_dir = open_experiment(cfg, out_dir, log, data_blocks(cfg))
    start = time.time()
    images, masks, meta, groups, source = load_data(cfg, cfg["data"])
    splits = experiment_splits(len(images), cfg["data"]["split"], cfg["seed"], groups, cfg["sweep"]["folds"])
    check_split_sizes(cfg, splits, len(set(groups)))
    seeds = cfg["sweep"]["seeds"] or [None]
    total = len(ready) * len(cfg["sweep"]["fractions"]) * len(splits) * len(seeds)
    log(f"[{cfg['name']}] profile {cfg['profile']}: {source}, {len(images)} images of {len(set(groups))} subjects at "
        f"{'x'.join(map(str, cfg['data']['image_size']))}, {_channels_text(cfg['data']['channels'])}; split by subject: {len(splits[0][0])} train / "
        f"{len(splits[0][1])} validation / {len(splits[0][2])} test{' (fold 0)' if len(splits) > 1 else ''}; "
        f"{total} training run{'s' * (total > 1)}")
    source_model = pretrain(cfg, exp_dir, verbose, log)[0] if "pretrain" in cfg else None
    summary, count = [], 0
    for spec, weights, weights_note in ready:
        for fraction in cfg["sweep"]["fractions"]:
            repeat_rows, ensemble_rows = [], []
            for k, (train, val, test) in enumerate(splits):
                base = spec["name"] + (f"-frac{fraction:g}" if len(cfg["sweep"]["fractions"]) > 1 else "") + \
                    (f"-fold{k}" if len(splits) > 1 else "")
                members = []
                for s in seeds:  # seeds vary the initialisation, the shuffling and the fraction drawn; not the split
                    count += 1
                    name = base + (f"-seed{s}" if s is not None else "")
                    members.append((os.path.join(exp_dir, name), s))
                    row = read_done(os.path.join(exp_dir, name), cfg, spec, DEFAULTS)
                    if row is not None:
                        log(f"[{cfg['name']}] {name}: done earlier, skipped")
                    else:
                        seed = cfg["seed"] + k if s is None else s
                        subset = fraction_indices(train, fraction, seed=cfg["seed"] if s is None else s, groups=groups)
                        row = _train_and_evaluate(
                            cfg, spec, name, os.path.join(exp_dir, name), f"[{count}/{total}] {name}", weights,
                            weights_note, source_model, subset, val, test, (images, masks, meta), seed=seed, fold=k,
                            fraction=fraction, verbose=verbose, repeat_seed=s)
                        log(f"[{cfg['name']}] {name}: Dice {row['dice']:.3f}, trainable {row['trainable_params']:,}, "
                            f"{time.time() - start:.0f}s" + (f", weights sha1 {row['weights_sha1']}"
                                                           if "weights_sha1" in row else ""))
                    repeat_rows.append(row)
                if cfg["evaluation"]["ensemble"]:
                    ensemble_rows.append(_ensemble_run(cfg, spec, base + "-ensemble", exp_dir, members,
                                                       repeat_rows[-len(members):], (images, masks, meta), test,
                                                       fraction=fraction, fold=k, log=log))
            summary.append(aggregate_folds(repeat_rows, MEASURES))
            if ensemble_rows:  # one model per fold: its ± is over folds, and with one fold there is none
                ensemble_row = aggregate_folds(ensemble_rows, MEASURES)
                if len(ensemble_rows) == 1:
                    ensemble_row.update({k + "_sd": float("nan") for k in MEASURES})
                summary.append(ensemble_row)
    _write_summary(cfg, exp_dir, summary, source, log, skipped)
    log(f"[{cfg['name']}] wrote {os.path.join(exp_dir, 'summary.md')} in {time.time() - start:.0f}s")
    return summary


def _channels_text(channels):
    return {1: "1 channel (grey)", 3: "3 channels (RGB)"}.get(channels, f"{channels} channels")


def _train_and_evaluate(cfg, spec, name, run_dir, label, weights, weights_note, source_model, train, val, test,
                        arrays, seed, fold, fraction, verbose, repeat_seed=None):
    """One run: build, train through its stages, evaluate on `test`, write the run folder; its row."""
    images, masks, meta = arrays
    t = cfg["training"]
    start_run(run_dir, seed)
    with distribution_scope(cfg):  # build, transfer and train under the strategy (after start_run's reset)
        model = _build(cfg, merge(cfg["model"], spec.get("model")), weights)
        if spec.get("init") == "pretrain":
            report = transfer_weights(source_model, model)
            source = (cfg["pretrain"].get("data") or {}).get("layout") or "the source task"
            weights_note = f"pre-trained on {source} ({len(report.copied)} layers copied)"
        write_config(run_dir, cfg, run=spec, fraction=fraction, fold=fold, run_seed=seed, n_train=len(train), n_val=len(val),
                     n_test=len(test), weights_used=weights_note)
        # precise_bn: each stage ends with the BatchNorm statistics of its final weights, from the training images
        bn_data = make_dataset(images[train], masks[train], t["batch_size"], seed=seed) if t["precise_bn"] else None
        bar = EpochProgress(label, sum(s["epochs"] for s in stages(cfg, spec)), disable=bool(verbose))
        done = run_stages(model, stages(cfg, spec), make_dataset(images[train], masks[train], t["batch_size"],
                                                                 cfg["data"]["augment"], seed=seed),
                          make_dataset(images[val], masks[val], t["batch_size"], shuffle=False) if val else None,
                          run_dir=run_dir, loss=t["loss"], optimizer=t["optimizer"], jit_compile=t["jit_compile"],
                          batchnorm=t["batchnorm"], patience=t["patience"], verbose=verbose, callbacks=[bar],
                          tensorboard=t["tensorboard"], gradient_accumulation=t["gradient_accumulation"], bn_data=bn_data)
        bar.close()
    history = merged_history(done)
    write_csv(os.path.join(run_dir, "history.csv"), [dict(zip(history, v)) for v in zip(*history.values())])
    save_model(model, os.path.join(run_dir, "model.keras"))
    learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), name)
    cases = _test_and_plot(cfg, model, run_dir, name, arrays, test)
    row = summary_row(spec, done, weights_note, cases, MEASURES, fraction=fraction, fold=fold, n_test=len(test),
                      **({"seed": repeat_seed} if repeat_seed is not None else {}),
                      **({"weights_sha1": weights_digest(model)} if t["distribute"] else {}))
    finish_run(run_dir, row, name)
    return row


def _ensemble_run(cfg, spec, name, exp_dir, members, member_rows, arrays, test, fraction, fold, log=print):
    """The run `name`: the mean probability of the seeds' models `members` ((run folder, seed)), tested
    on their split's `test` like a trained run (metrics.csv, figures, done.json), its model.keras
    exportable as any run's; its row."""
    run_dir = os.path.join(exp_dir, name)
    paths = [os.path.join(d, "model.keras") for d, _ in members]
    for p in paths:
        if not os.path.isfile(p):
            raise ConfigError(f"{p} is missing, so {name} cannot average it; delete {os.path.dirname(p)} to retrain "
                              "that seed")
    listed = [{"run": os.path.basename(d), "seed": s, "sha1": file_sha1(p)} for (d, s), p in zip(members, paths)]
    row = read_done(run_dir, cfg, spec, DEFAULTS)
    if row is not None and _recorded_members(run_dir) == listed:
        log(f"[{cfg['name']}] {name}: done earlier, skipped")
        return row
    if row is not None:  # other seeds, or a seed retrained since: the old ensemble is not these models' mean
        os.remove(os.path.join(run_dir, "done.json"))
        log(f"[{cfg['name']}] {name}: its members changed since it was made; made again")
    start_run(run_dir, cfg["seed"])
    model = ensemble_model([keras.models.load_model(p, compile=False) for p in paths], name=f"{spec['name']}_ensemble")
    seeds = ", ".join(str(s) for _, s in members)
    note = f"mean of the models of seeds {seeds} ({member_rows[0]['weights']})"
    write_config(run_dir, cfg, run=spec, fraction=fraction, fold=fold, n_test=len(test), weights_used=note,
                 ensemble=listed)
    save_model(model, os.path.join(run_dir, "model.keras"))
    cases = _test_and_plot(cfg, model, run_dir, name, arrays, test)
    # parameters and epochs: the members' sums (what the ensemble holds and cost to train)
    row = {"run": f"{spec['name']} (ensemble)", "fraction": fraction, "fold": fold, "n_test": len(test),
           "stages": "ensemble", "trainable_params": int(sum(r["trainable_params"] for r in member_rows)),
           "weights": note, "epochs": float(sum(r["epochs"] for r in member_rows)), "members": len(members)}
    for key in MEASURES:
        row[key], row[key + "_sd"] = mean_sd(cases, key)
    finish_run(run_dir, row, name)
    log(f"[{cfg['name']}] {name}: Dice {row['dice']:.3f} (the mean probability of seeds {seeds})")
    return row


def _recorded_members(run_dir):
    """The `ensemble` list an ensemble run's config.yaml records (None if unreadable)."""
    try:
        with open(os.path.join(run_dir, "config.yaml")) as f:
            return (yaml.safe_load(f) or {}).get("ensemble")
    except (OSError, yaml.YAMLError):
        return None


def _test_and_plot(cfg, model, run_dir, name, arrays, test):
    """Tests `model` on the `test` cases with the config's evaluation; writes metrics.csv and the
    figures (overlays; on HC18 the worst cases at full size and the Bland-Altman plot of HC). The
    per-case rows."""
    images, masks, meta = arrays
    e = cfg["evaluation"]
    full = []
    cases, labels = evaluate_cases(model, images[test], masks[test], [meta[i] for i in test], threshold=e["threshold"],
                                   tta=e["tta"], full_size=full, largest_component=e["largest_component"])
    write_csv(os.path.join(run_dir, "metrics.csv"), cases)
    figures = os.path.join(run_dir, "figures")
    overlays(images[test][:8], masks[test][:8], labels[:8], os.path.join(figures, "overlays.png"),
             [c["case"] for c in cases[:8]])
    if full:  # HC18 at the scan's own size: the worst cases and the agreement of HC
        worst = np.argsort([c["dice_full"] for c in cases])[:8]
        overlays([read_image(meta[test[i]]["image"], channels=1) for i in worst],
                 [read_filled_annotation(meta[test[i]]["annotation"]) for i in worst], [full[i] for i in worst],
                 os.path.join(figures, "worst_cases.png"),
                 [f"{cases[i]['case']} (ADF {cases[i]['adf_mm']:.1f} mm)" for i in worst])
        bland_altman([c["hc_pred_mm"] for c in cases], [c["hc_true_mm"] for c in cases],
                     os.path.join(figures, "bland_altman_hc.png"), f"{name}: HC on {len(cases)} test images")
    return cases


def _write_summary(cfg, exp_dir, rows, source, log=print, skipped=()):
    paper = cfg.get("paper") or {}
    has_hc = any(np.isfinite(r.get("hc_abs_error_mm", float("nan"))) for r in rows)
    def paper_dice(r):  # the papers' Dice values are for their full training sets
        return paper_value(paper, r["run"]) if r["fraction"] == 1 else "—"
    has_paper = any(paper_dice(r) != "—" for r in rows)
    lines = [f"# {cfg['name']} — profile `{cfg['profile']}`", "", f"Data: {source}. {UNITS}. Measures at the model's "
             "input size" + ("; HC error from the probabilities resized to the scan's own size." if has_hc else "."), "",
             "| run | fraction | trainable params | Dice (ours) |" + (" Dice (paper) |" if has_paper else "") +
             " mIoU | pixel acc. |" + (" HC MAE (mm) |" if has_hc else "") + " epochs | test cases | initial weights |",
             "|---|---:|---:|---:|" + ("---:|" if has_paper else "") + "---:|---:|" + ("---:|" if has_hc else "") +
             "---:|---:|---|"]
    for r in rows:
        sd = f" ± {fmt(r['dice_sd'])}" if np.isfinite(r.get("dice_sd", float("nan"))) else ""
        lines.append(f"| {r['run']} | {r['fraction']:g} | {r['trainable_params']:,} | {fmt(r['dice'])}{sd} | " +
                     (f"{paper_dice(r)} | " if has_paper else "") +
                     f"{fmt(r['miou'])} | {fmt(r['pixel_accuracy'])} | " +
                     (f"{fmt(r['hc_abs_error_mm'], 1, 2)} | " if has_hc else "") +
                     f"{r['epochs']:g} | {r['n_test']} | {r['weights']} |")
    challenge = [r for r in rows if np.isfinite(r.get("adf_mm", float("nan")))]
    if challenge:
        tta = " with flip test-time augmentation" if cfg["evaluation"]["tta"] == "flip" else ""
        lines += ["", f"HC18 challenge measures at the scan's own size{tta}: probabilities resized to the original "
                  "size, thresholded, largest component, sub-pixel ellipse fit, CSV pixel size; mean ± sd over the "
                  "test images (over seeds, for repeated runs).", "",
                  "| run | fraction | DF (mm) | ADF (mm) | Dice | Hausdorff (mm) | test cases |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in challenge:
            def ms(key, scale=1, digits=3):
                sd = r.get(key + "_sd", float("nan"))
                return fmt(r[key], scale, digits) + (f" ± {fmt(sd, scale, digits)}" if np.isfinite(sd) else "")
            lines.append(f"| {r['run']} | {r['fraction']:g} | {ms('df_mm', 1, 2)} | {ms('adf_mm', 1, 2)} | "
                         f"{ms('dice_full')} | {ms('hausdorff_mm', 1, 2)} | {r['n_test']} |")
    if any(r.get("stages") == "ensemble" for r in rows):
        lines += ["", "A \"(ensemble)\" row is the mean probability of the seeds' models, tested as one model: its "
                  "± is over folds (none with one fold); its trainable params and epochs are the members' sums."]
    if skipped:
        lines += ["", f"Not run: {skip_message(cfg, skipped)}"]
    if paper.get("note"):
        lines += ["", paper["note"]]
    write_tables(exp_dir, lines, rows, log)
    if len({r["trainable_params"] for r in rows}) > 1:  # a Dice-vs-size plot needs sizes that differ
        dice_vs_params(rows, os.path.join(exp_dir, "dice_vs_params.png"), title=f"{cfg['name']} ({cfg['profile']})",
                       paper={k: v / (100.0 if paper.get("dice_scale") == "percent" else 1.0)
                              for k, v in (paper.get("dice") or {}).items() if isinstance(v, (int, float))})
    if len(cfg["sweep"]["fractions"]) > 1:
        repeats = "seeds" if cfg["sweep"]["seeds"] else "folds" if cfg["sweep"]["folds"] else None
        dice_vs_fraction(rows, os.path.join(exp_dir, "dice_vs_fraction.png"),
                         f"{cfg['name']} ({cfg['profile']})" + (f": mean ± sd over {repeats}" if repeats else ""))
