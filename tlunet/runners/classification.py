"""The runner for reverse-transfer experiments (Gare et al. 2022): configs with `task: classification`.

1. Train a multi-class line-segmentation U-Net (background, pleural line, A-line, B-line) once per
   label kind the runs need: dense (filled regions) and/or sparse (1-px line annotations).
2. For each run, turn the chosen segmentation model — or the same architecture untrained — into a
   classifier (`seg_to_classifier`) and train it on class-labelled frames, split by video.
3. Evaluate per frame and per video (mean of its frames' probabilities); write metrics, the
   confusion matrix and explanation figures (segmentation overlay + Grad-CAM) as PNG.

results/<exp>/segmentation_<kind>/, results/<exp>/<run>/{metrics.json, predictions.csv,
figures/confusion.png, figures/explain_*.png, done.json}, results/<exp>/summary.{md,csv}.
"""

import json
import os
import time

import keras
import numpy as np

import tlunet
from tlunet import evaluation as ev
from tlunet.data import (find_class_folders, find_pairs, frames_by_group, make_classification_dataset, make_dataset,
                         read_image, read_mask, resize_pair, split_indices, stratified_split)
from tlunet.data.lines import convert_labels
from tlunet.data.phantoms import lung_ultrasound, phantom_videos
from tlunet.explain import explain_figure
from tlunet.finetune import trainable_params
from tlunet.models import seg_to_classifier
from tlunet.models.classifier import FEATURE_INPUTS
from tlunet.plots import confusion_matrix, learning_curves
from tlunet.progress import EpochProgress
from tlunet.resources import ConfigError
from tlunet.runners.config import (apply_profile, check_keys, check_model, check_numbers, check_seeds, check_size,
                                   check_split, check_split_sizes, resolve_path)
from tlunet.runners.results import (aggregate_folds, cached_source, finish_run, fmt, open_experiment, read_done, start_run,
                                    write_config, write_csv, write_tables)
from tlunet.train import compile_model, fit, save_model

DEFAULTS = {
    "seed": 0,
    "classes": ["covid", "pneumonia", "regular"],
    "data": {"kind": "lung_us_videos", "image_size": [128, 128], "split": [0.6, 0.2, 0.2]},
    "segmentation": {
        "data": {"kind": "lung_us_lines", "n": 120, "image_size": [128, 128]},
        "model": {"name": "unet", "filters": [16, 32, 64, 128, 256]},
        "training": {"epochs": 20, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice", "augment": None,
                     "lr_schedule": None, "tensorboard": False},
    },
    "classifier": {"inputs": "both", "hidden": 64, "dropout": 0.3},
    "training": {"epochs": 20, "batch_size": 16, "learning_rate": 3e-4, "augment": None, "patience": None,
                 "lr_schedule": None, "tensorboard": False},
    "explain": {"n": 3},
    "sweep": {"seeds": None},
    "runs": [],
}
TOP_KEYS = {"classes", "data", "segmentation", "classifier", "training", "explain", "sweep"}
INITS = ("dense", "sparse", "random")
DATA_KEYS = {"root", "n_videos", "frames_per_video", "phantom_size", "every", "max_frames", "limit"}
SEG_DATA_KEYS = {"root", "layout", "n", "phantom_size", "labels", "limit"}


def config_from_dict(raw, path, profile=None, overrides=None):
    """DEFAULTS, the config, its profile and overrides, checked."""
    cfg = apply_profile(raw, path, DEFAULTS, profile, overrides)
    seg = cfg["segmentation"]
    if not isinstance(seg, dict) or set(seg) - {"data", "model", "training"}:
        raise ConfigError(f"{path}: unknown segmentation keys {sorted(set(seg) - {'data', 'model', 'training'})}; "
                          "valid: ['data', 'model', 'training']")
    check_keys(cfg, path, TOP_KEYS, {
        "explain": (cfg["explain"], DEFAULTS["explain"]),
        "data": (cfg["data"], set(DEFAULTS["data"]) | DATA_KEYS),
        "segmentation.data": (cfg["segmentation"]["data"], set(DEFAULTS["segmentation"]["data"]) | SEG_DATA_KEYS),
        "training": (cfg["training"], DEFAULTS["training"]),
        "segmentation.training": (cfg["segmentation"]["training"], DEFAULTS["segmentation"]["training"]),
        "classifier": (cfg["classifier"], DEFAULTS["classifier"]),
        "sweep": (cfg["sweep"], DEFAULTS["sweep"])})
    check_seeds(path, cfg["sweep"]["seeds"])
    for where, t in (("training", cfg["training"]), ("segmentation.training", cfg["segmentation"]["training"])):
        check_numbers(path, t, where, positive_ints=("epochs", "batch_size"), positive_numbers=("learning_rate",),
                      optional_ints=("patience",) if "patience" in t else ())
    check_size(path, "data.image_size", cfg["data"]["image_size"], 2)
    check_split(path, "data.split", cfg["data"]["split"])
    if cfg["data"]["kind"] not in FRAME_KINDS:
        raise ConfigError(f"{path}: data.kind {cfg['data']['kind']!r} is not one of {sorted(FRAME_KINDS)}")
    if cfg["segmentation"]["data"]["kind"] not in SEG_KINDS:
        raise ConfigError(f"{path}: segmentation.data.kind {cfg['segmentation']['data']['kind']!r} is not one "
                          f"of {sorted(SEG_KINDS)}")
    if list(cfg["segmentation"]["data"]["image_size"]) != list(cfg["data"]["image_size"]):
        # the classifier is the segmentation network plus a head: it sees frames at the size the
        # network was built for
        raise ConfigError(f"{path}: segmentation.data.image_size {cfg['segmentation']['data']['image_size']} and "
                          f"data.image_size {cfg['data']['image_size']} must be the same (the classifier reuses the "
                          "segmentation network)")
    if cfg["classifier"]["inputs"] not in FEATURE_INPUTS:
        raise ConfigError(f"{path}: classifier.inputs must be one of {FEATURE_INPUTS}")
    if not isinstance(cfg["classes"], list) or len(cfg["classes"]) < 2 or len(set(cfg["classes"])) != len(cfg["classes"]):
        raise ConfigError(f"{path}: `classes` must list at least two distinct class names. Received: {cfg['classes']!r}")
    for run in cfg["runs"]:
        if run.get("init") not in INITS:
            raise ConfigError(f"{path}: run {run.get('name')!r}: init must be one of {INITS}")
        extra = sorted(set(run) - {"name", "init", "learning_rate"})
        if extra:
            raise ConfigError(f"{path}: run {run['name']!r}: unknown keys {extra}; valid: ['init', 'learning_rate', 'name']")
        if "learning_rate" in run:
            check_numbers(path, run, f"run {run['name']!r}", positive_numbers=("learning_rate",))
    check_model(cfg["segmentation"]["model"], path, "segmentation.model")
    return cfg


# ----------------------------------------------------------------------------------------- data
def _frames_phantom(cfg, d):
    frames, labels, groups = phantom_videos(cfg["classes"], d.get("n_videos", 8), d.get("frames_per_video", 6),
                                            d.get("phantom_size", d["image_size"]), seed=cfg["seed"])
    return frames, labels, groups, f"synthetic lung-US phantom videos ({len(set(groups))} videos, {len(frames)} frames)"


def _frames_folders(cfg, d):
    root = resolve_path(cfg, d["root"])
    items, classes = find_class_folders(root)
    if sorted(classes) != sorted(cfg["classes"]):
        raise ConfigError(f"{root}: class folders {classes} do not match `classes` {cfg['classes']}")
    order = {name: i for i, name in enumerate(cfg["classes"])}
    for item in items:
        item["label"] = order[item["class"]]
    frames, labels, groups = frames_by_group(items, every=d.get("every", 1), max_frames=d.get("max_frames"))
    return frames, labels, groups, f"{root} ({len(items)} videos/images, {len(frames)} frames)"


FRAME_KINDS = {"lung_us_videos": _frames_phantom, "class_folders": _frames_folders}


def _seg_phantom(cfg, d, kind):
    rng = np.random.default_rng(cfg["seed"] + 7)
    images, masks = [], []
    for i in range(d["n"]):
        f = lung_ultrasound(tuple(d.get("phantom_size", d["image_size"])), n_b_lines=int(rng.integers(0, 6)),
                            pleural_irregularity=float(rng.uniform(0, 1)), consolidation=bool(rng.random() < 0.3),
                            seed=int(rng.integers(1 << 30)))
        images.append(f["image"][..., None])
        masks.append(f[kind])
    return images, masks, f"synthetic lung-US frames with {kind} line labels ({len(images)})"


def _seg_pairs(cfg, d, kind):
    """Image/label folders; the labels are dense unless `labels: sparse`; the other kind is made
    with `tlunet.data.lines`."""
    root = resolve_path(cfg, d["root"])
    data = find_pairs(root, d.get("layout", "generic"), num_classes=4)
    images, masks = [], []
    for image_path, mask_path in zip(data.images, data.masks):
        images.append(read_image(image_path, channels=1))
        mask = read_mask(mask_path, binary=False, num_classes=4)
        masks.append(mask if d.get("labels", "dense") == kind else convert_labels(mask, kind))
    return images, masks, f"{root} ({len(images)} frames, {kind} labels)"


SEG_KINDS = {"lung_us_lines": _seg_phantom, "pairs": _seg_pairs}


def _resize_all(images, masks, size):
    pairs = [resize_pair(i, m, tuple(size)) for i, m in zip(images, masks)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# ------------------------------------------------------------------------------------- runner
def train_segmentation(cfg, kind, exp_dir, verbose=0, log=print):
    """The line-segmentation model for `kind` ("dense"/"sparse"), trained once and reused.
    Returns (model, per-class validation Dice dict)."""
    s = cfg["segmentation"]
    run_dir = os.path.join(exp_dir, f"segmentation_{kind}")

    def train():
        images, masks, desc = SEG_KINDS[s["data"]["kind"]](cfg, s["data"], kind)
        images, masks = _resize_all(images, masks, s["data"]["image_size"])
        train_idx, val_idx = split_indices(len(images), (0.85, 0.15), seed=cfg["seed"])
        keras.utils.set_random_seed(cfg["seed"])
        model = tlunet.build_model(s["model"]["name"], input_shape=(*s["data"]["image_size"], 1), classes=4,
                                   **{k: v for k, v in s["model"].items() if k != "name"})
        t = s["training"]
        compile_model(model, loss=t["loss"], learning_rate=t["learning_rate"])
        fit(model, make_dataset(images[train_idx], masks[train_idx], t["batch_size"], t["augment"], seed=cfg["seed"]),
            make_dataset(images[val_idx], masks[val_idx], t["batch_size"], shuffle=False), run_dir=run_dir,
            epochs=t["epochs"], verbose=verbose, lr_schedule=t.get("lr_schedule"),
            callbacks=[EpochProgress(f"{kind}-label segmentation", t["epochs"], disable=bool(verbose))])
        pred = np.argmax(model.predict(images[val_idx].astype(np.float32) / 255, verbose=0), axis=-1)
        names = {1: "pleural", 2: "a_line", 3: "b_line"}
        val_dice = {names[c]: float(np.nanmean([ev.dice(p == c, m == c) for p, m in zip(pred, masks[val_idx])
                                                if (m == c).any() or (p == c).any()] or [float("nan")]))
                    for c in (1, 2, 3)}
        return model, {"source": desc, "val_dice": val_dice}

    model, info = cached_source(run_dir, train, settings={"seed": cfg["seed"], "kind": kind, **s},
                                defaults=DEFAULTS["segmentation"])
    log(f"[{cfg['name']}] {kind}-label segmentation on {info['source']}: val Dice "
        + ", ".join(f"{k} {v:.3f}" for k, v in info["val_dice"].items()))
    return model, info["val_dice"]


def run(cfg, out_dir="results", verbose=0, log=print):
    """Runs every run of a `task: classification` config; returns the summary rows."""
    _, _, exp_dir = open_experiment(cfg, out_dir, log, {"data": cfg["data"], "segmentation.data": cfg["segmentation"]["data"]},
                                    plan=False)
    start = time.time()
    d, t = cfg["data"], cfg["training"]
    frames, labels, groups, source = FRAME_KINDS[d["kind"]](cfg, d)
    train, val, test = stratified_split(labels, groups, d["split"], cfg["seed"])
    check_split_sizes(cfg, [(train, val, test)], len(set(groups)))
    log(f"[{cfg['name']}] data: {source}; {len(train)}/{len(val)}/{len(test)} frames train/val/test, "
        "split by video")
    seg = {kind: train_segmentation(cfg, kind, exp_dir, verbose, log)
           for kind in ("dense", "sparse") if any(r["init"] == kind for r in cfg["runs"])}
    data = (frames, labels, groups, train, val, test)
    test_images = np.concatenate([x for x, _ in make_classification_dataset(
        [frames[i] for i in test], labels[test], tuple(d["image_size"]), t["batch_size"], shuffle=False).as_numpy_iterator()])
    summary = []
    seeds = cfg["sweep"]["seeds"] or [None]
    total = len(cfg["runs"]) * len(seeds)
    for i, spec in enumerate(cfg["runs"]):
        rows = []
        for j, s in enumerate(seeds):  # seeds vary the classifier's initialisation and shuffling; not the data,
            name = spec["name"] + (f"-seed{s}" if s is not None else "")  # the split or the segmentation sources
            run_dir = os.path.join(exp_dir, name)
            row = read_done(run_dir, cfg, spec, DEFAULTS)
            if row is not None:
                log(f"[{cfg['name']}] {name}: done earlier, skipped")
            else:
                row = _train_and_evaluate(cfg, spec, run_dir, f"[{i * len(seeds) + j + 1}/{total}] {name}",
                                          seg, data, test_images, verbose, seed=cfg["seed"] if s is None else s,
                                          repeat_seed=s)
                log(f"[{cfg['name']}] {name}: accuracy {row['accuracy']:.3f}, macro F1 {row['macro_f1']:.3f}, "
                    f"macro AUC {row['macro_auc']:.3f}, {time.time() - start:.0f}s")
            rows.append(row)
        summary.append(aggregate_folds(rows, ["accuracy", "macro_f1", "macro_auc", "video_accuracy",
                                              *(f"f1_{n}" for n in cfg["classes"])]))
    _write_summary(cfg, exp_dir, summary, source, log)
    log(f"[{cfg['name']}] wrote {os.path.join(exp_dir, 'summary.md')} in {time.time() - start:.0f}s")
    return summary


def _train_and_evaluate(cfg, spec, run_dir, label, seg, data, test_images, verbose, seed, repeat_seed=None):
    frames, labels, groups, train, val, test = data
    d, t, c, names = cfg["data"], cfg["training"], cfg["classifier"], cfg["classes"]
    size = tuple(d["image_size"])
    start_run(run_dir, seed)
    write_config(run_dir, cfg, run=spec, run_seed=seed)
    if spec["init"] == "random":
        src = tlunet.build_model(cfg["segmentation"]["model"]["name"], input_shape=(*size, 1), classes=4,
                                 **{k: v for k, v in cfg["segmentation"]["model"].items() if k != "name"})
        seg_dice = {}
    else:
        src, seg_dice = seg[spec["init"]]
    model = seg_to_classifier(src, len(names), inputs=c["inputs"], hidden=c["hidden"], dropout=c["dropout"],
                              weights="random" if spec["init"] == "random" else "keep")
    model.compile(optimizer=keras.optimizers.Adam(spec.get("learning_rate", t["learning_rate"])),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train_ds = make_classification_dataset([frames[i] for i in train], labels[train], size, t["batch_size"],
                                           t["augment"], seed=seed)
    val_ds = make_classification_dataset([frames[i] for i in val], labels[val], size, t["batch_size"], shuffle=False)
    bar = EpochProgress(label, t["epochs"], disable=bool(verbose))
    history = fit(model, train_ds, val_ds, run_dir=run_dir, epochs=t["epochs"], monitor="val_accuracy",
                  lr_schedule=t.get("lr_schedule"), tensorboard=t.get("tensorboard", False),
                  patience=t["patience"], verbose=verbose, callbacks=[bar])
    bar.close()
    learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), spec["name"])
    probs = model.predict(test_images, batch_size=t["batch_size"], verbose=0)
    m = ev.classification_metrics(labels[test], probs, names)
    videos = sorted({groups[i] for i in test})
    video_probs = np.stack([probs[[j for j, i in enumerate(test) if groups[i] == v]].mean(axis=0) for v in videos])
    video_labels = np.array([labels[[i for i in test if groups[i] == v][0]] for v in videos])
    m["video_accuracy"] = float(np.mean(video_probs.argmax(axis=1) == video_labels))
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(m, f, indent=1)
    write_csv(os.path.join(run_dir, "predictions.csv"),
              [{"frame": j, "video": groups[i], "true": names[labels[i]], "predicted": names[int(p.argmax())],
                **{f"p_{n}": float(p[k]) for k, n in enumerate(names)}} for j, (i, p) in enumerate(zip(test, probs))])
    confusion_matrix(m["confusion"], names, os.path.join(run_dir, "figures", "confusion.png"),
                     f"{spec['name']} (test frames)")
    if c["inputs"] != "features":  # the first test frame of each class, up to explain.n figures
        firsts = [labels[test].tolist().index(k) for k in range(len(names)) if k in labels[test]]
        for j in firsts[:cfg["explain"]["n"]]:
            k = int(labels[test[j]])
            explain_figure(model, test_images[j], os.path.join(run_dir, "figures", f"explain_{names[k]}.png"),
                           names, true_label=k)
    save_model(model, os.path.join(run_dir, "model.keras"))
    row = {"run": spec["name"], "init": spec["init"], "stages": "all", "trainable_params": trainable_params(model),
           "weights": "random init" if spec["init"] == "random" else f"{spec['init']}-label segmentation model",
           "seg_val_dice": float(np.nanmean(list(seg_dice.values()))) if seg_dice else float("nan"),
           "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "macro_auc": m["macro_auc"],
           "video_accuracy": m["video_accuracy"], "epochs": len(history.get("loss", [])),
           "n_test_frames": len(test), "n_test_videos": len(videos),
           **{f"f1_{n}": m["per_class"][n]["f1"] for n in names},
           **({"seed": repeat_seed} if repeat_seed is not None else {})}
    finish_run(run_dir, row, os.path.basename(run_dir))
    return row


def _write_summary(cfg, exp_dir, rows, source, log=print):
    names = cfg["classes"]
    paper = cfg.get("paper") or {}
    lines = [f"# {cfg['name']} — profile `{cfg['profile']}`", "", f"Data: {source}.", "",
             "| run | initialised from | seg. val Dice | trainable params | accuracy | macro F1 | macro AUC | "
             + " | ".join(f"F1 {n}" for n in names) + " | video accuracy | epochs | test frames / videos |",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|"]

    def ms(r, key):  # mean ± sd over seeds, where there are several
        return fmt(r[key]) + (f" ± {fmt(r[key + '_sd'])}" if key + "_sd" in r else "")

    for r in rows:
        lines.append(f"| {r['run']} | {r['init']} | {fmt(r['seg_val_dice'])} | {r['trainable_params']:,} | "
                     f"{ms(r, 'accuracy')} | {ms(r, 'macro_f1')} | {ms(r, 'macro_auc')} | "
                     + " | ".join(ms(r, f'f1_{n}') for n in names)
                     + f" | {ms(r, 'video_accuracy')} | {r['epochs']:g} | {r['n_test_frames']} / {r['n_test_videos']} |")
    seeds = cfg["sweep"]["seeds"]
    if seeds and len(seeds) > 1:
        lines += ["", f"Mean ± sd (population sd) over {len(seeds)} seeds ({', '.join(map(str, seeds))}): each seed "
                      "initialises and shuffles the classifier anew; the data, the split and the segmentation sources "
                      "are the same."]
    if paper.get("note"):
        lines += ["", paper["note"]]
    write_tables(exp_dir, lines, rows, log)
