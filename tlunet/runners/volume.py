"""The 3D segmentation runner (`task: volume`): Bressem et al. 2021 and Wang et al. 2020.

Patch training on volumes, whole-volume sliding-window evaluation (Dice, NSD, HD95 in mm with the
voxel spacing), and Wang 2020's transfer methods from a source model pre-trained once per experiment.
"""

import os
import time

import numpy as np

import tlunet
from tlunet import evaluation as ev
from tlunet.data import experiment_splits, make_patch_dataset
from tlunet.data.nifti import find_nifti_pairs, hu_window, load_nifti
from tlunet.data.phantoms import ct_volume
from tlunet.inference import sliding_window_predict
from tlunet.plots import learning_curves, overlays
from tlunet.progress import EpochProgress
from tlunet.resources import ConfigError
from tlunet.runners.config import (check_precise_bn, resolve_precise_bn, check_split_sizes, distribution_scope, apply_profile, check_keys, data_blocks, check_numbers, check_pretrain, check_runs, check_seeds,
                                   check_size,
                                   check_split, merge, resolve_path, skip_message,
                                   stages)
from tlunet.runners.results import (UNITS, paper_value, aggregate_folds, cached_source, finish_run, fmt, merged_history, open_experiment,
                                    read_done, start_run, summary_row, write_config, write_csv, write_tables)
from tlunet.train import compile_model, fit, run_stages, save_model
from tlunet.transfer import TRANSFER_METHODS

DEFAULTS = {
    "seed": 0,
    "deterministic": False,
    "data": {"kind": "ct_phantom", "window": [-1250.0, 250.0], "target_spacing": None,
             "patch_size": [32, 128, 128], "split": [0.7, 0.1, 0.2], "limit": None},
    "model": {"name": "unet3d", "classes": 1},
    "training": {"epochs": 10, "batch_size": 2, "learning_rate": 1e-3, "loss": "bce_dice",
                 "patches_per_volume": 4, "foreground_prob": 0.33, "augment": True, "patience": None,
                 "batchnorm": "follow", "optimizer": "adam", "mixed_precision": None, "jit_compile": False,
                 "lr_schedule": None, "tensorboard": False, "distribute": None,
                 "gradient_accumulation": 1, "precise_bn": None},
    "inference": {"overlap": 0.5, "tta": False, "batch_size": 2, "nsd_tolerance_mm": 1.0},
    "sweep": {"folds": None, "train_on": "rest", "seeds": None},
    "runs": [],
}
TOP_KEYS = {"data", "model", "training", "inference", "sweep", "pretrain"}
DATA_KEYS = set(DEFAULTS["data"]) | {"root", "layout", "n", "shape", "spacing", "n_lesions", "lesion_hu",
                                     "lesion_radius", "seed_offset", "get"}
MEASURES = ("dice", "nsd", "hd95_mm")


def config_from_dict(raw, path, profile=None, overrides=None):
    """DEFAULTS, the config, its profile and overrides, checked."""
    cfg = apply_profile(raw, path, DEFAULTS, profile, overrides)
    check_keys(cfg, path, TOP_KEYS, {"data": (cfg["data"], DATA_KEYS),
                                     "training": (cfg["training"], DEFAULTS["training"]),
                                     "inference": (cfg["inference"], DEFAULTS["inference"]),
                                     "sweep": (cfg["sweep"], DEFAULTS["sweep"])})
    check_numbers(path, cfg["training"], "training", positive_ints=("epochs", "batch_size", "gradient_accumulation", "patches_per_volume"),
                  positive_numbers=("learning_rate",), optional_ints=("patience",))
    check_split(path, "data.split", cfg["data"]["split"])
    check_pretrain(cfg, path, DATA_KEYS, DEFAULTS["training"])
    resolve_precise_bn(cfg)
    check_precise_bn(path, cfg)
    check_runs(cfg, path)
    for where, d in [("data", cfg["data"])] + ([("pretrain.data", merge(cfg["data"], cfg["pretrain"].get("data")))]
                                                if "pretrain" in cfg else []):
        if d["kind"] not in VOLUME_KINDS:
            raise ConfigError(f"{path}: {where}.kind {d['kind']!r} is not one of {sorted(VOLUME_KINDS)}")
        if d["kind"] == "nifti" and not d.get("root"):
            raise ConfigError(f"{path}: {where}.kind nifti needs `root`")
        check_size(path, f"{where}.patch_size", d["patch_size"], 3)
    check_seeds(path, cfg["sweep"]["seeds"])
    if cfg["sweep"]["train_on"] not in ("rest", "fold"):
        raise ConfigError(f"{path}: sweep.train_on must be 'rest' (k-fold CV) or 'fold' (train on one fold)")
    for run in cfg["runs"]:
        method = run.get("transfer")
        if method is not None and method not in TRANSFER_METHODS:
            raise ConfigError(f"{path}: run {run.get('name')!r}: transfer {method!r} is not one of "
                              f"{sorted(TRANSFER_METHODS)}")
        if method not in (None, "scratch") and "pretrain" not in cfg:
            raise ConfigError(f"{path}: run {run.get('name')!r} uses transfer {method!r} but there is no "
                              "`pretrain` block (the source task)")
    return cfg


# ----------------------------------------------------------------------------------------- data
def _ct_phantom(cfg, d):
    """SYNTHETIC CT volumes (tlunet.data.phantoms.ct_volume), HU-windowed like real scans."""
    kw = {k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in ("shape", "spacing", "n_lesions",
                                                                          "lesion_hu", "lesion_radius") if k in d}
    cases = []
    for i in range(d.get("n", 10)):
        ct = ct_volume(seed=cfg["seed"] * 1000 + d.get("seed_offset", 0) + i, **kw)
        cases.append({"case": f"phantom_{i:03d}", "image": hu_window(ct["image"], tuple(d["window"])),
                      "mask": ct["mask"], "spacing": ct["spacing"]})
    desc = f"synthetic CT phantom ({len(cases)} volumes {tuple(cases[0]['image'].shape)}, lesions " \
           f"{d.get('lesion_hu', -500):g} HU)"
    return cases, desc


def _nifti(cfg, d):
    root = resolve_path(cfg, d["root"])
    cases = []
    for case, image, mask in find_nifti_pairs(root, d.get("layout", "generic")):
        vol = load_nifti(image, mask, window=tuple(d["window"]),
                         target_spacing=None if d["target_spacing"] is None else tuple(d["target_spacing"]))
        cases.append({"case": case, "image": vol["image"], "mask": (vol["mask"] > 0).astype(np.uint8),
                      "spacing": vol["spacing"]})
    return cases, f"{root} ({len(cases)} NIfTI volumes)"


VOLUME_KINDS = {"ct_phantom": _ct_phantom, "nifti": _nifti}


def load_volumes(cfg, d):
    """Returns (cases [{case, image (D,H,W) float32 [0,1], mask uint8, spacing}], description)."""
    cases, desc = VOLUME_KINDS[d["kind"]](cfg, d)
    if d.get("limit"):
        cases = cases[:d["limit"]]
    return cases, desc


# --------------------------------------------------------------------------------- evaluation
def evaluate_volumes(model, cases, inference, threshold=0.5):
    """Whole-volume sliding-window predictions; per case Dice, NSD at the tolerance (mm) and HD95
    (mm) with the case's spacing. Returns (rows, predicted masks)."""
    rows, preds = [], []
    for c in cases:
        prob = sliding_window_predict(model, c["image"], overlap=inference["overlap"], tta=inference["tta"],
                                      batch_size=inference["batch_size"], progress=f"{c['case']}: windows")[..., 0]
        pred, true = prob >= threshold, c["mask"] > 0
        rows.append({"case": c["case"], "dice": ev.dice(pred, true),
                     "nsd": ev.normalized_surface_dice(pred, true, inference["nsd_tolerance_mm"], c["spacing"]),
                     "hd95_mm": ev.hd95(pred, true, c["spacing"]), "lesion_voxels": int(true.sum()),
                     "predicted_voxels": int(pred.sum())})
        preds.append(pred)
    return rows, preds


def slice_overlays(cases, preds, path, max_rows=3):
    """Image / truth / prediction on the axial slice with the most lesion, for a few cases."""
    images, truths, predicted, titles = [], [], [], []
    for c, p in list(zip(cases, preds))[:max_rows]:
        z = int(np.argmax(c["mask"].reshape(len(c["mask"]), -1).sum(axis=1)))
        images.append((c["image"][z][..., None] * 255).astype(np.uint8))
        truths.append(c["mask"][z])
        predicted.append(p[z])
        titles.append(f"{c['case']} slice {z}")
    overlays(images, truths, predicted, path, titles)


# ------------------------------------------------------------------------------------- runner
def _patches(cfg, d, cases, seed, training):
    t = cfg["training"]
    return make_patch_dataset([c["image"] for c in cases], [c["mask"] for c in cases], tuple(d["patch_size"]),
                              batch_size=t["batch_size"], patches_per_volume=t["patches_per_volume"],
                              foreground_prob=t["foreground_prob"], seed=seed,
                              augment=bool(t["augment"]) and training, fixed=not training)


def pretrain(cfg, exp_dir, verbose=0, log=print):
    """The source-task model (Wang et al. 2020: non-COVID lung lesions), trained once, at the pre-train
    block's own patch size (convolution weights do not depend on it)."""
    p = merge({"data": cfg["data"], "model": cfg["model"], "training": cfg["training"]}, cfg["pretrain"])
    p_cfg = {**cfg, **p}

    def train():
        cases, desc = load_volumes(cfg, p["data"])
        n_val = max(1, len(cases) // 10)
        with distribution_scope(cfg):
            model = tlunet.build_model(p["model"]["name"], input_shape=(*p["data"]["patch_size"], 1),
                                       **{k: v for k, v in p["model"].items() if k not in ("name", "encoder_weights")})
            compile_model(model, loss=p["training"]["loss"], learning_rate=p["training"]["learning_rate"],
                          optimizer=p["training"]["optimizer"], gradient_accumulation=p["training"]["gradient_accumulation"])
            history = fit(model, _patches(p_cfg, p["data"], cases[n_val:], cfg["seed"], True),
                          _patches(p_cfg, p["data"], cases[:n_val], cfg["seed"] + 99, False),
                          run_dir=os.path.join(exp_dir, "pretrain"), epochs=p["training"]["epochs"], verbose=verbose,
                          lr_schedule=p["training"].get("lr_schedule"), tensorboard=p["training"]["tensorboard"],
                          callbacks=[EpochProgress("source (pre-training)", p["training"]["epochs"], disable=bool(verbose))],
                          recompute_bn=p["training"]["precise_bn"],
                          bn_data=_patches(p_cfg, p["data"], cases[n_val:], cfg["seed"], False))
        return model, {"source": desc, "epochs": len(history.get("loss", [])),
                       "val_dice": history.get("val_dice", [float("nan")])[-1]}

    model, info = cached_source(os.path.join(exp_dir, "pretrain"), train,
                                settings={"seed": cfg["seed"], **p}, defaults={k: DEFAULTS[k] for k in ("seed", "data", "model", "training")})
    log(f"[{cfg['name']}] source model: {model.name} pre-trained on {info['source']}: {info['epochs']} epochs, "
        f"final val Dice {info['val_dice']:.3f}")
    return model, p


def run(cfg, out_dir="results", verbose=0, log=print):
    """Runs every (run, fold) of a `task: volume` config; returns the summary rows."""
    ready, skipped, exp_dir = open_experiment(cfg, out_dir, log, data_blocks(cfg), input_shape=(*cfg["data"]["patch_size"], 1))
    start = time.time()
    cases, source = load_volumes(cfg, cfg["data"])
    splits = experiment_splits(len(cases), cfg["data"]["split"], cfg["seed"], folds=cfg["sweep"]["folds"],
                               train_on=cfg["sweep"]["train_on"], validation=False)
    check_split_sizes(cfg, splits, len(cases), validation=False)
    log(f"[{cfg['name']}] data: {source}; patches {tuple(cfg['data']['patch_size'])}")
    source_model = pretrain(cfg, exp_dir, verbose, log)[0] if "pretrain" in cfg else None
    summary = []
    seeds = cfg["sweep"]["seeds"] or [None]
    for spec, weights, weights_note in ready:
        fold_rows = []
        for k, (train, val, test) in enumerate(splits):
            for s in seeds:  # seeds vary the initialisation and the patches drawn; not the split or the source
                name = spec["name"] + (f"-fold{k}" if len(splits) > 1 else "") + (f"-seed{s}" if s is not None else "")
                run_dir = os.path.join(exp_dir, name)
                row = read_done(run_dir, cfg, spec, DEFAULTS)
                if row is not None:
                    log(f"[{cfg['name']}] {name}: done earlier, skipped")
                else:
                    row = _train_and_evaluate(cfg, spec, name, run_dir, weights, weights_note, source_model, cases,
                                              train, val, test, k, verbose, seed=cfg["seed"] + k if s is None else s,
                                              repeat_seed=s)
                    log(f"[{cfg['name']}] {name}: Dice {row['dice']:.3f}, NSD {row['nsd']:.3f}, "
                        f"trainable {row['trainable_params']:,}, {time.time() - start:.0f}s")
                fold_rows.append(row)
        summary.append(aggregate_folds(fold_rows, MEASURES))
    _write_summary(cfg, exp_dir, summary, source, log, skipped)
    log(f"[{cfg['name']}] wrote {os.path.join(exp_dir, 'summary.md')} in {time.time() - start:.0f}s")
    return summary


def _train_and_evaluate(cfg, spec, name, run_dir, weights, weights_note, source_model, cases, train, val, test, fold,
                        verbose, seed, repeat_seed=None):
    t, shape, method = cfg["training"], (*cfg["data"]["patch_size"], 1), spec.get("transfer")
    mcfg = merge(cfg["model"], spec.get("model"))
    start_run(run_dir, seed)
    with distribution_scope(cfg):  # build, transfer and train under the strategy (after start_run's reset)
        if method is None:
            model = tlunet.build_model(mcfg["name"], input_shape=shape, encoder_weights=weights,
                                       **{k: v for k, v in mcfg.items() if k not in ("name", "encoder_weights")})
        else:
            model, report = tlunet.build_transfer_model(method, source_model, classes=mcfg.get("classes", 1),
                                                        input_shape=shape)
            weights_note = f"{method}: {len(report.copied)} layers from the source model" if method != "scratch" \
                else "scratch: random init"
        write_config(run_dir, cfg, run=spec, fold=fold, run_seed=seed, weights_used=weights_note,
                     train_cases=[cases[i]["case"] for i in train], test_cases=[cases[i]["case"] for i in test])
        # precise_bn: each stage ends with the BatchNorm statistics of its final weights, from training
        # patches (no augmentation)
        bn_data = _patches(cfg, cfg["data"], [cases[i] for i in train], seed, False) if t["precise_bn"] else None
        bar = EpochProgress(name, sum(s["epochs"] for s in stages(cfg, spec)), disable=bool(verbose))
        done = run_stages(model, stages(cfg, spec), _patches(cfg, cfg["data"], [cases[i] for i in train], seed, True),
                          _patches(cfg, cfg["data"], [cases[i] for i in val], cfg["seed"] + 99, False) if val else None,
                          run_dir=run_dir, loss=t["loss"], optimizer=t["optimizer"], jit_compile=t["jit_compile"],
                          batchnorm=t["batchnorm"], patience=t["patience"], verbose=verbose, callbacks=[bar],
                          tensorboard=t["tensorboard"], gradient_accumulation=t["gradient_accumulation"], bn_data=bn_data)
        bar.close()
    history = merged_history(done)
    write_csv(os.path.join(run_dir, "history.csv"), [dict(zip(history, v)) for v in zip(*history.values())])
    learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), name)
    test_cases = [cases[i] for i in test]
    rows, preds = evaluate_volumes(model, test_cases, cfg["inference"])
    write_csv(os.path.join(run_dir, "metrics.csv"), rows)
    slice_overlays(test_cases, preds, os.path.join(run_dir, "figures", "overlays.png"))
    save_model(model, os.path.join(run_dir, "model.keras"))
    row = summary_row(spec, done, weights_note, rows, MEASURES, fold=fold, transfer=method or "—",
                      n_train=len(train), n_test=len(test), **({"seed": repeat_seed} if repeat_seed is not None else {}))
    finish_run(run_dir, row, name)
    return row


def _write_summary(cfg, exp_dir, rows, source, log=print, skipped=()):
    paper = cfg.get("paper") or {}
    has_paper = any(paper_value(paper, r["run"]) != "—" for r in rows)  # no column of dashes
    lines = [f"# {cfg['name']} — profile `{cfg['profile']}`", "", f"Data: {source}. {UNITS}.", "",
             "| run | transfer | trainable params | Dice (ours) |" + (" Dice (paper) |" if has_paper else "") +
             f" NSD@{cfg['inference']['nsd_tolerance_mm']:g} mm "
             "| HD95 (mm) | epochs | train (per fold) / test cases (all folds) | folds | initial weights |",
             "|---|---|---:|---:|" + ("---:|" if has_paper else "") + "---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sd = f" ± {fmt(r['dice_sd'])}" if np.isfinite(r.get("dice_sd", float("nan"))) else ""
        lines.append(f"| {r['run']} | {r['transfer']} | {r['trainable_params']:,} | {fmt(r['dice'])}{sd} | " +
                     (f"{paper_value(paper, r['run'])} | " if has_paper else "") +
                     f"{fmt(r['nsd'])} | {fmt(r['hd95_mm'], 1, 1)} | "
                     f"{r['epochs']:g} | {r['n_train']:g} / {r['n_test']} | {r['folds']} | {r['weights']} |")
    seeds = cfg["sweep"]["seeds"] if len(cfg["sweep"]["seeds"] or []) > 1 else None
    folds = max(r.get("folds", 1) for r in rows) if rows else 1
    spread = ((f"the {folds} folds" if folds > 1 else "the test cases") if not seeds else
              (f"the {folds} × {len(seeds)} runs of {folds} folds and " if folds > 1 else "the runs of ")
              + f"{len(seeds)} seeds ({', '.join(map(str, seeds))}; each initialises the model and draws the training "
              "patches anew; the split and the source model are the same)")
    lines += ["", f"Dice: mean ± sd (population sd) over {spread}."]
    if skipped:
        lines += ["", f"Not run: {skip_message(cfg, skipped)}"]
    if paper.get("note"):
        lines += ["", paper["note"]]
    write_tables(exp_dir, lines, rows, log)
