"""The runner for volume (3D CT) experiments: configs with `task: volume`.

Same conventions as `tlunet.experiment` (YAML with quick/full profiles, results/<exp>/<run>/...,
done.json to skip finished runs, a summary table with the paper's numbers beside ours), with:
patch training from whole volumes (`make_patch_dataset`), whole-volume evaluation by
sliding-window inference (`tlunet.inference`), Dice / normalised surface Dice / HD95 in mm from
the voxel spacing, and Wang et al. 2020's transfer methods (`transfer:` in a run).
"""

import json
import os
import time

import numpy as np
import yaml

from tlunet import evaluation as ev
from tlunet.experiment import (ConfigError, _fmt, _mean, _merge, _resolve, _write_csv, aggregate_folds,
                               apply_profile, read_done, write_tables)
from tlunet.progress import EpochProgress

DEFAULTS = {
    "seed": 0,
    "deterministic": False,
    "data": {"kind": "ct_phantom", "window": [-1250.0, 250.0], "target_spacing": None,
             "patch_size": [32, 128, 128], "split": [0.7, 0.1, 0.2], "limit": None},
    "model": {"name": "unet3d", "classes": 1},
    "training": {"epochs": 10, "batch_size": 2, "learning_rate": 1e-3, "loss": "bce_dice",
                 "patches_per_volume": 4, "foreground_prob": 0.33, "augment": True, "patience": None,
                 "batchnorm": "follow", "optimizer": "adam", "mixed_precision": None, "jit_compile": False},
    "inference": {"overlap": 0.5, "tta": False, "batch_size": 2, "nsd_tolerance_mm": 1.0},
    "sweep": {"folds": None, "train_on": "rest"},
    "runs": [],
}
DATA_KEYS = {"root", "layout", "n", "shape", "spacing", "n_lesions", "lesion_hu", "lesion_radius", "seed_offset"}
KNOWN_KEYS = {"name", "task", "seed", "deterministic", "data", "model", "training", "inference", "sweep",
              "runs", "paper", "pretrain", "profile", "_config_path", "description"}


def config_from_dict(raw, path, profile=None, overrides=None):
    """Applies DEFAULTS, the profile and overrides to a `task: volume` config and validates it."""
    cfg = apply_profile(raw, path, DEFAULTS, profile, overrides)
    _validate(cfg, path)
    return cfg


def _validate(cfg, path):
    import tlunet
    from tlunet.finetune import get_strategy
    from tlunet.transfer import TRANSFER_METHODS

    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; valid: {sorted(k for k in KNOWN_KEYS if k[0] != '_')}")
    for section in ("data", "training", "inference", "sweep"):
        extra = sorted(set(cfg[section]) - set(DEFAULTS[section]) - (DATA_KEYS if section == "data" else set()))
        if extra:
            raise ConfigError(f"{path}: unknown {section} keys {extra}; valid: "
                              f"{sorted(set(DEFAULTS[section]) | (DATA_KEYS if section == 'data' else set()))}")
    if not cfg.get("name"):
        raise ConfigError(f"{path}: missing `name`")
    for where, d in [("data", cfg["data"])] + ([("pretrain.data", _merge(cfg["data"], cfg["pretrain"].get("data")))]
                                                if "pretrain" in cfg else []):
        if d["kind"] not in VOLUME_KINDS:
            raise ConfigError(f"{path}: {where}.kind {d['kind']!r} is not one of {sorted(VOLUME_KINDS)}")
        if d["kind"] == "nifti" and not d.get("root"):
            raise ConfigError(f"{path}: {where}.kind nifti needs `root`")
    if cfg["sweep"]["train_on"] not in ("rest", "fold"):
        raise ConfigError(f"{path}: sweep.train_on must be 'rest' (k-fold CV) or 'fold' (train on one fold)")
    if len(cfg["data"]["patch_size"]) != 3:
        raise ConfigError(f"{path}: data.patch_size must be [D, H, W]")
    if not cfg["runs"]:
        raise ConfigError(f"{path}: `runs` is empty")
    for run in cfg["runs"]:
        method = run.get("transfer")
        if method is not None and method not in TRANSFER_METHODS:
            raise ConfigError(f"{path}: run {run.get('name')!r}: transfer {method!r} is not one of "
                              f"{sorted(TRANSFER_METHODS)}")
        if method not in (None, "scratch") and "pretrain" not in cfg:
            raise ConfigError(f"{path}: run {run.get('name')!r} uses transfer {method!r} but there is no "
                              "`pretrain` block (the source task)")
        try:
            tlunet.get_model_info(_merge(cfg["model"], run.get("model"))["name"])
            for stage in _stages(cfg, run):
                get_strategy(stage["strategy"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{path}: run {run.get('name')!r}: {e}") from e


def _stages(cfg, run):
    t = cfg["training"]
    if "stages" in run:
        return [{"epochs": t["epochs"], "learning_rate": t["learning_rate"], **s} for s in run["stages"]]
    return [{"strategy": run.get("strategy", "all"), "epochs": t["epochs"], "learning_rate": t["learning_rate"]}]


# ----------------------------------------------------------------------------------------- data
def _ct_phantom(cfg, d):
    """SYNTHETIC CT volumes (tlunet.data.phantoms.ct_volume), HU-windowed like real scans."""
    from tlunet.data.nifti import hu_window
    from tlunet.data.phantoms import ct_volume
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
    from tlunet.data.nifti import find_nifti_pairs, load_nifti
    root = _resolve(cfg, d["root"])
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
    from tlunet.inference import sliding_window_predict
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
    from tlunet.plots import overlays
    images, truths, predicted, titles = [], [], [], []
    for c, p in list(zip(cases, preds))[:max_rows]:
        z = int(np.argmax(c["mask"].reshape(len(c["mask"]), -1).sum(axis=1)))
        images.append((c["image"][z][..., None] * 255).astype(np.uint8))
        truths.append(c["mask"][z])
        predicted.append(p[z])
        titles.append(f"{c['case']} slice {z}")
    overlays(images, truths, predicted, path, titles)


# ------------------------------------------------------------------------------------- runner
def _splits(cfg, n):
    from tlunet.data import split_indices
    from tlunet.train import kfold_indices
    s = cfg["sweep"]
    if s.get("folds"):
        out = []
        for other, held in kfold_indices(n, s["folds"], seed=cfg["seed"]):
            # train_on "fold" (Wang et al. 2020): train on the held-out fifth, test on the other 4/5
            train, test = (held, other) if s["train_on"] == "fold" else (other, held)
            out.append((list(train), [], list(test)))
        return out
    return [tuple(list(x) for x in split_indices(n, cfg["data"]["split"], seed=cfg["seed"]))]


def _patches(cfg, cases, seed, training):
    from tlunet.data import make_patch_dataset
    t, d = cfg["training"], cfg["data"]
    return make_patch_dataset([c["image"] for c in cases], [c["mask"] for c in cases], tuple(d["patch_size"]),
                              batch_size=t["batch_size"], patches_per_volume=t["patches_per_volume"],
                              foreground_prob=t["foreground_prob"], seed=seed,
                              augment=bool(t["augment"]) and training)


def _build(cfg, mcfg, notes):
    """(model, note): the run's model from the zoo. When the Kinetics/ImageNet weights it names cannot
    be downloaded, (None, "unavailable: ...") — the run is skipped, never trained from random weights
    under the pretrained run's name — and the download is not retried for the next runs (`notes`)."""
    import tlunet
    shape = (*cfg["data"]["patch_size"], 1)
    kwargs = {k: v for k, v in mcfg.items() if k not in ("name", "encoder_weights")}
    weights = mcfg.get("encoder_weights")
    download = weights in ("kinetics400", "imagenet")
    if weights is None:
        note = "random init"
    elif download:
        note = f"{weights} encoder"
    else:
        note = f"encoder file {weights}"
    if download and weights in notes:
        return None, notes[weights]
    try:
        return tlunet.build_model(mcfg["name"], input_shape=shape, encoder_weights=weights, **kwargs), note
    except (RuntimeError, ImportError) as e:
        if not download:
            raise
        notes[weights] = (f"unavailable: the {weights} weights could not be downloaded ({e}); pass the weights "
                          f"file with --set model.encoder_weights=FILE")
        return None, notes[weights]


def _pretrain(cfg, exp_dir, verbose, log):
    """Trains the source-task model once (Wang et al. 2020: non-COVID lung lesions)."""
    import keras

    import tlunet
    from tlunet.train import compile_model, fit
    p = _merge({"data": cfg["data"], "model": cfg["model"], "training": cfg["training"]}, cfg["pretrain"])
    p_cfg = {**cfg, **p}
    run_dir = os.path.join(exp_dir, "pretrain")
    path = os.path.join(run_dir, "source.keras")
    if os.path.isfile(path):
        return keras.models.load_model(path), p
    cases, desc = load_volumes(cfg, p["data"])
    n_val = max(1, len(cases) // 10)
    model = tlunet.build_model(p["model"]["name"], input_shape=(*cfg["data"]["patch_size"], 1),
                               **{k: v for k, v in p["model"].items() if k != "name"})
    compile_model(model, loss=p["training"]["loss"], learning_rate=p["training"]["learning_rate"])
    history = fit(model, _patches(p_cfg, cases[n_val:], cfg["seed"], True),
                  _patches(p_cfg, cases[:n_val], cfg["seed"] + 99, False),
                  run_dir=run_dir, epochs=p["training"]["epochs"], verbose=verbose)
    with open(os.path.join(run_dir, "source.txt"), "w") as f:
        f.write(f"{desc}\n")
    model.save(path + ".partial.keras")
    os.replace(path + ".partial.keras", path)
    log(f"[{cfg['name']}] pre-trained {model.name} on {desc}: {len(history.get('loss', []))} epochs, "
        f"final val Dice {history.get('val_dice', [float('nan')])[-1]:.3f}")
    return model, p


def run_volume_experiment(cfg, out_dir="results", verbose=0, log=print):
    """Runs every (run, fold) of a `task: volume` config; returns the summary rows."""
    import keras

    import tlunet
    from tlunet.plots import learning_curves
    from tlunet.train import configure, run_stages

    exp_dir = os.path.join(out_dir, cfg["name"])
    os.makedirs(exp_dir, exist_ok=True)
    configure(cfg["seed"], cfg["deterministic"], cfg["training"]["mixed_precision"])
    start = time.time()
    cases, source = load_volumes(cfg, cfg["data"])
    log(f"[{cfg['name']}] data: {source}; patches {tuple(cfg['data']['patch_size'])}")
    pretrained = _pretrain(cfg, exp_dir, verbose, log) if "pretrain" in cfg else None
    t, notes, summary, skipped = cfg["training"], {}, [], []
    for run in cfg["runs"]:
        fold_rows = []
        for k, (train, val, test) in enumerate(_splits(cfg, len(cases))):
            name = run["name"] + (f"-fold{k}" if cfg["sweep"].get("folds") else "")
            run_dir = os.path.join(exp_dir, name)
            finished = read_done(run_dir)
            if finished is not None:
                fold_rows.append(finished)
                log(f"[{cfg['name']}] {name}: done earlier, skipped")
                continue
            keras.backend.clear_session()
            keras.utils.set_random_seed(cfg["seed"] + k)
            method = run.get("transfer")
            mcfg = _merge(cfg["model"], run.get("model"))
            if method is None:
                model, weights_note = _build(cfg, mcfg, notes)
                if model is None:
                    log(f"[{cfg['name']}] {run['name']}: skipped, {weights_note}")
                    skipped.append((run["name"], weights_note))
                    break
            else:
                model, report = tlunet.build_transfer_model(method, pretrained[0], classes=mcfg.get("classes", 1),
                                                            input_shape=(*cfg["data"]["patch_size"], 1))
                weights_note = f"{method}: {len(report.copied)} layers from the source model" \
                    if method != "scratch" else "scratch: random init"
            os.makedirs(os.path.join(run_dir, "figures"), exist_ok=True)
            with open(os.path.join(run_dir, "config.yaml"), "w") as f:
                yaml.safe_dump({k2: v for k2, v in cfg.items() if not k2.startswith("_")} |
                               {"run": run, "fold": k, "weights_used": weights_note,
                                "train_cases": [cases[i]["case"] for i in train],
                                "test_cases": [cases[i]["case"] for i in test]}, f, sort_keys=False)
            train_ds = _patches(cfg, [cases[i] for i in train], cfg["seed"] + k, True)
            val_ds = _patches(cfg, [cases[i] for i in val], cfg["seed"] + 99, False) if val else None
            bar = EpochProgress(f"{name}", sum(s["epochs"] for s in _stages(cfg, run)), disable=bool(verbose))
            stages = run_stages(model, _stages(cfg, run), train_ds, val_ds, run_dir=run_dir, loss=t["loss"],
                                optimizer=t["optimizer"], jit_compile=t["jit_compile"], batchnorm=t["batchnorm"],
                                patience=t["patience"], verbose=verbose, callbacks=[bar])
            bar.close()
            history = {}
            for s in stages:
                for key, values in s["history"].items():
                    history.setdefault(key, []).extend(values)
            learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), name)
            test_cases = [cases[i] for i in test]
            rows, preds = evaluate_volumes(model, test_cases, cfg["inference"])
            _write_csv(os.path.join(run_dir, "metrics.csv"), rows)
            slice_overlays(test_cases, preds, os.path.join(run_dir, "figures", "overlays.png"))
            model.save(os.path.join(run_dir, "model.keras"))
            row = {"run": run["name"], "fold": k, "transfer": method or "—",
                   "stages": "+".join(str(s["strategy"]) for s in stages),
                   "trainable_params": stages[-1]["trainable_params"], "weights": weights_note,
                   "epochs": sum(s["epochs_run"] for s in stages), "n_train": len(train), "n_test": len(test)}
            for key in ("dice", "nsd", "hd95_mm"):
                row[key], row[key + "_sd"] = _mean(rows, key)
            with open(os.path.join(run_dir, "done.json"), "w") as f:
                json.dump(row, f)
            fold_rows.append(row)
            log(f"[{cfg['name']}] {name}: Dice {row['dice']:.3f}, NSD {row['nsd']:.3f}, "
                f"trainable {row['trainable_params']:,}, {time.time() - start:.0f}s")
        if fold_rows:
            summary.append(aggregate_folds(fold_rows, ("dice", "nsd", "hd95_mm")))
    _write_summary(cfg, exp_dir, summary, source, log, skipped)
    log(f"[{cfg['name']}] wrote {os.path.join(exp_dir, 'summary.md')} in {time.time() - start:.0f}s")
    return summary


def _write_summary(cfg, exp_dir, rows, source, log=print, skipped=()):
    paper = cfg.get("paper") or {}
    scale = 100.0 if paper.get("dice_scale") == "percent" else 1.0
    digits = 1 if scale > 1 else 3
    lines = [f"# {cfg['name']} — profile `{cfg['profile']}`", "", f"Data: {source}.", "",
             f"| run | transfer | trainable params | Dice (ours) | Dice (paper) | NSD@{cfg['inference']['nsd_tolerance_mm']:g} mm "
             "| HD95 (mm) | epochs | train / test cases | folds | initial weights |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sd = f" ± {_fmt(r['dice_sd'], scale, digits)}" if np.isfinite(r.get("dice_sd", float("nan"))) else ""
        lines.append(f"| {r['run']} | {r['transfer']} | {r['trainable_params']:,} | {_fmt(r['dice'], scale, digits)}{sd} | "
                     f"{(paper.get('dice') or {}).get(r['run'], '—')} | {_fmt(r['nsd'])} | {_fmt(r['hd95_mm'], 1, 1)} | "
                     f"{r['epochs']} | {r['n_train']} / {r['n_test']} | {r['folds']} | {r['weights']} |")
    for name, reason in skipped:
        lines += ["", f"Not run: {name} — {reason[len('unavailable: '):]}."]
    if paper.get("note"):
        lines += ["", paper["note"]]
    write_tables(exp_dir, lines, rows, log)
