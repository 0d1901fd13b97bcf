"""One runner for every paper's experiment: a YAML config (with `quick`/`full` profiles) in, per-run
results and one table with the paper's numbers beside ours out.

results/<experiment>/<run>/{config.yaml, history.csv, metrics.csv, summary.md, figures/*.png} and
results/<experiment>/summary.{md,csv}, figures/dice_vs_params.png. A finished run leaves
`done.json` and is skipped when the experiment is started again; an unfinished one resumes.
"""

import copy
import csv
import json
import os
import time

import numpy as np
import yaml

from tlunet import evaluation as ev
from tlunet.biometry import head_circumference
from tlunet.data.download import download_hc18
from tlunet.progress import EpochProgress
from tlunet.resources import SAMPLE_PREFIX, ConfigError, find_config, read_config, sample_path

DEFAULTS = {
    "seed": 0,
    "deterministic": False,
    "data": {"kind": "hc18", "image_size": [256, 256], "channels": 1, "split": [0.7, 0.15, 0.15],
             "augment": None, "limit": None},
    "model": {"name": "mobilenetv2_unet", "classes": 1},
    "training": {"epochs": 10, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice",
                 "patience": None, "mixed_precision": None, "jit_compile": False, "batchnorm": "follow",
                 "optimizer": "adam"},
    "sweep": {"fractions": [1.0], "folds": None},
    "runs": [],
}


def _merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(name_or_path, profile=None, overrides=None):
    """Reads a config (a shipped experiment's name or a YAML path), applies DEFAULTS, then
    `profiles[profile]`, then `overrides` (a dict, e.g. from `parse_overrides`)."""
    path = find_config(name_or_path)
    return config_from_dict(read_config(path), path, profile, overrides)


def parse_overrides(items):
    """`["training.epochs=5", "pretrain.data.root=/data/ecssd"]` -> a nested override dict.

    Values are read as YAML (`5` is an int, `[128, 192]` a list, `null` None, anything else a string).
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY.SUB=VALUE, e.g. training.epochs=5")
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from e
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set to a value and used as a section")
        if parts[-1] in _PATH_KEYS and isinstance(value, str) and value != "download" \
                and not value.startswith(SAMPLE_PREFIX):
            value = os.path.abspath(os.path.expanduser(value))  # relative to where the command runs
        node[parts[-1]] = value
    return out


_PATH_KEYS = ("root", "encoder_weights")


def config_from_dict(raw, path, profile=None, overrides=None):
    """Like `load_config` for a dict; relative paths resolve against `path`'s directory."""
    if raw.get("task") == "volume":
        from tlunet import experiment3d
        return experiment3d.config_from_dict(raw, path, profile, overrides)
    if raw.get("task") == "classification":
        from tlunet import experiment_cls
        return experiment_cls.config_from_dict(raw, path, profile, overrides)
    if raw.get("task", "image") != "image":
        raise ConfigError(f"{path}: task {raw['task']!r} is not 'image', 'volume' or 'classification'")
    cfg = apply_profile(raw, path, DEFAULTS, profile, overrides)
    _validate(cfg, path)
    return cfg


def apply_profile(raw, path, defaults, profile=None, overrides=None):
    """`defaults`, then the raw config, then `profiles[profile]`, then `overrides` (every runner's
    config layering); records the profile and the config path."""
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    if profile is not None and profile not in profiles:
        raise ConfigError(f"{path}: no profile {profile!r}; it has {sorted(profiles)}")
    cfg = _merge(_merge(_merge(defaults, raw), profiles.get(profile) if profile else None), overrides)
    cfg["profile"] = profile or "default"
    cfg["_config_path"] = path
    return cfg


KNOWN_KEYS = {"name", "task", "seed", "deterministic", "data", "model", "training", "sweep", "runs", "paper",
              "pretrain", "profile", "_config_path", "description"}


def _validate(cfg, path):
    import tlunet
    from tlunet.finetune import get_strategy

    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; valid: {sorted(k for k in KNOWN_KEYS if k[0] != '_')}")
    for section in ("data", "training", "sweep"):
        extra = sorted(set(cfg[section]) - set(DEFAULTS[section]) - {"root", "layout", "n", "phantom_size", "get"})
        if extra:
            raise ConfigError(f"{path}: unknown {section} keys {extra}; valid: {sorted(DEFAULTS[section])}")
    if not cfg.get("name"):
        raise ConfigError(f"{path}: missing `name`")
    if cfg["data"]["kind"] not in DATA_KINDS:
        raise ConfigError(f"{path}: data.kind {cfg['data']['kind']!r} is not one of {sorted(DATA_KINDS)}")
    if not cfg["runs"]:
        raise ConfigError(f"{path}: `runs` is empty")
    for run in cfg["runs"]:
        model = _merge(cfg["model"], run.get("model"))
        try:
            tlunet.get_model_info(model["name"])
            for stage in _stages(cfg, run):
                get_strategy(stage["strategy"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{path}: run {run.get('name')!r}: {e}") from e
        if run.get("init") == "pretrain" and "pretrain" not in cfg:
            raise ConfigError(f"{path}: run {run.get('name')!r} has init: pretrain but no `pretrain` block")
    for key in ("image_size",):
        if len(cfg["data"][key]) != 2:
            raise ConfigError(f"{path}: data.{key} must be [H, W]")


def _stages(cfg, run):
    t = cfg["training"]
    if "stages" in run:
        return [{"epochs": t["epochs"], "learning_rate": t["learning_rate"], **s} for s in run["stages"]]
    return [{"strategy": run.get("strategy", "all"), "epochs": t["epochs"], "learning_rate": t["learning_rate"]}]


def _resolve(cfg, path):
    """A config's path: `sample:NAME` is a bundled sample, a relative path is relative to the config file."""
    if path is None or path == "download":
        return path
    path = os.path.expanduser(str(path))
    if path.startswith(SAMPLE_PREFIX):
        return sample_path(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(os.path.dirname(cfg["_config_path"]), path))


def check_sources(cfg, blocks):
    """Stops before any work when a data folder a run needs is not there, saying how to get it.

    Args:
        cfg: the config.
        blocks: {where: data block}, e.g. {"data": cfg["data"], "pretrain.data": ...}.
    """
    for where, d in blocks.items():
        if "root" not in d or d["root"] == "download":
            continue
        root = _resolve(cfg, d["root"])
        if root is None or not os.path.isdir(root):
            what = "is not set" if root is None else f"is {root}, which is not a folder"
            how = d.get("get") or f"pass --data FOLDER or --set {where}.root=FOLDER"
            raise ConfigError(f"{cfg['name']}: {where}.root {what}. {how}")


# ----------------------------------------------------------------------------------------- data
def _data_hc18(cfg, d):
    from tlunet.data import hc18_set
    root = _resolve(cfg, d["root"])
    if root == "download":  # the official files from Zenodo, once, MD5-checked
        root = download_hc18()
    data = hc18_set(root)
    source = f"HC18 bundled sample `{d['root'][len(SAMPLE_PREFIX):]}`" if str(d["root"]).startswith(SAMPLE_PREFIX) \
        else f"HC18 ({root})"
    return data, [m["subject"] for m in data.meta], source


def _data_pairs(cfg, d):
    from tlunet.data import find_pairs
    root = _resolve(cfg, d["root"])
    data = find_pairs(root, d.get("layout", "generic"))
    return data, [m["stem"] for m in data.meta], root


def _data_lung_us_phantom(cfg, d):
    """SYNTHETIC lung-ultrasound frames with rib masks, generated in memory."""
    from tlunet.data import SegmentationSet
    from tlunet.data.phantoms import lung_ultrasound
    frames = [lung_ultrasound(tuple(d.get("phantom_size", [256, 256])), n_b_lines=i % 4,
                              pleural_irregularity=(i % 3) / 2, seed=cfg["seed"] * 1000 + i)
              for i in range(d.get("n", 60))]
    data = SegmentationSet([f"phantom_{i}" for i in range(len(frames))],
                           [f"phantom_{i}" for i in range(len(frames))], [{} for _ in frames])
    data.arrays = (np.stack([f["image"][..., None] for f in frames]), np.stack([f["rib_mask"] for f in frames]))
    return data, list(range(len(frames))), "synthetic lung-ultrasound phantom"


DATA_KINDS = {"hc18": _data_hc18, "pairs": _data_pairs, "lung_us_phantom": _data_lung_us_phantom}


def load_data(cfg, d):
    """Returns (images uint8, masks uint8, meta list, groups list, source description)."""
    from tlunet.data import load_arrays
    from tlunet.data.pipeline import resize_pair
    data, groups, source = DATA_KINDS[d["kind"]](cfg, d)
    if d.get("limit"):
        keep = list(range(min(d["limit"], len(data))))
        data, groups = data.subset(keep), [groups[i] for i in keep]
    size = tuple(d["image_size"])
    if hasattr(data, "arrays"):
        pairs = [resize_pair(i, m, size) for i, m in zip(*data.arrays)]
        images, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        for meta, image in zip(data.meta, data.arrays[0]):
            meta["original_size"] = image.shape[:2]
    else:
        images, masks = load_arrays(data, size, channels=d["channels"])
    return images, masks, data.meta, groups, source


# --------------------------------------------------------------------------------- evaluation
def evaluate_cases(model, images, masks, meta, threshold=0.5, batch_size=8):
    """Per-case Dice, mIoU (foreground and background), pixel accuracy, and HC error in mm where
    the case has a pixel size and a reference HC (HC18)."""
    from PIL import Image
    probs = model.predict(images.astype(np.float32) / 255.0, batch_size=batch_size, verbose=0)[..., 0]
    rows = []
    for p, true, m in zip(probs, masks, meta):
        pred = p >= threshold
        true = true > 0
        row = {"case": m.get("name", m.get("stem", "")), "dice": ev.dice(pred, true),
               "miou": (ev.iou(pred, true) + ev.iou(~pred, ~true)) / 2,
               "pixel_accuracy": ev.pixel_accuracy(pred, true)}
        if "pixel_size" in m and "hc_mm" in m:
            h, w = m["original_size"]
            full = np.asarray(Image.fromarray(p.astype(np.float32)).resize((w, h), Image.BILINEAR)) >= threshold
            hc = head_circumference(full, m["pixel_size"])
            row.update(hc_pred_mm=hc, hc_true_mm=m["hc_mm"], hc_abs_error_mm=abs(hc - m["hc_mm"]))
        rows.append(row)
    return rows, probs


def read_done(run_dir):
    """The summary row a finished run left in `run_dir/done.json`, or None if it has not finished."""
    done = os.path.join(run_dir, "done.json")
    if not os.path.isfile(done):
        return None
    with open(done) as f:
        return json.load(f)


def write_tables(exp_dir, lines, rows, log=print):
    """Writes an experiment's summary.md (the table `lines`) and summary.csv (`rows`) and logs it."""
    with open(os.path.join(exp_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _write_csv(os.path.join(exp_dir, "summary.csv"), rows)
    log("\n".join(lines))


def _write_csv(path, rows):
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _mean(rows, key):
    values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))


# ------------------------------------------------------------------------------------- runner
def _encoder_weights(requested, model_name, notes):
    """(weights argument, note) for a run's encoder; weights None with a note starting "unavailable"
    when ImageNet weights were asked for and cannot be had (no network and no cached file)."""
    import tlunet
    if not tlunet.get_model_info(model_name).pretrained_encoder:
        return None, "random init (no pretrained encoder)"
    if requested is None:
        return None, "random init"
    if requested != "imagenet":
        return requested, f"encoder file {os.path.basename(str(requested))}"
    key = f"imagenet:{model_name}"
    if key not in notes:
        try:
            tlunet.build_model(model_name, input_shape=(32, 32, 3), encoder_weights="imagenet")
            notes[key] = ("imagenet", "ImageNet (keras.applications)")
        except RuntimeError:
            notes[key] = (None, "unavailable: ImageNet weights could not be downloaded (no network) and are not "
                                "cached in ~/.keras/models")
    return notes[key]


def plan_runs(cfg, notes):
    """Which runs can start from the weights they name. A run that fine-tunes an ImageNet encoder
    (under a paper's strategy name) is never run from random weights in its place: it is skipped,
    with the reason. Returns ([(run, weights, note)], [(run name, reason)])."""
    ready, skipped = [], []
    for run in cfg["runs"]:
        mcfg = _merge(cfg["model"], run.get("model"))
        weights, note = _encoder_weights(mcfg.get("encoder_weights"), mcfg["name"], notes)
        if note.startswith("unavailable"):
            skipped.append((run["name"], note))
        else:
            ready.append((run, weights, note))
    return ready, skipped


def _skip_message(cfg, skipped):
    names = ", ".join(name for name, _ in skipped)
    return (f"{len(skipped)} of {len(cfg['runs'])} runs fine-tune a pretrained encoder whose weights cannot be "
            f"had here, and are skipped rather than run from random weights: {names}. "
            f"{skipped[0][1][len('unavailable: '):]}. To run them, give the weights file: "
            f"--encoder-weights FILE (the keras.applications `..._no_top.h5`, or a `.weights.h5` saved from "
            f"keras.applications with include_top=False).")


def _split(cfg, n, groups):
    from tlunet.data import split_indices
    from tlunet.train import kfold_indices
    folds = cfg["sweep"].get("folds")
    split = cfg["data"]["split"]
    if folds:
        out = []
        for train_val, test in kfold_indices(n, folds, seed=cfg["seed"], groups=groups):
            val_frac = split[1] / (split[0] + split[1])
            sub = split_indices(len(train_val), (1 - val_frac, val_frac), seed=cfg["seed"],
                                groups=[groups[i] for i in train_val])
            out.append(([train_val[i] for i in sub[0]], [train_val[i] for i in sub[1]], test))
        return out
    train, val, test = split_indices(n, split, seed=cfg["seed"], groups=groups)
    return [(train, val, test)]


def _pretrain(cfg, out_dir, verbose):
    """Source-task pre-training (e.g. X-Unet on grey salient-object images); returns weights path."""
    import tlunet
    from tlunet.data import make_dataset, split_indices
    from tlunet.train import compile_model, fit
    p = _merge({"data": cfg["data"], "model": cfg["model"], "training": cfg["training"]}, cfg["pretrain"])
    path = os.path.join(out_dir, "pretrain", "final.weights.h5")
    if os.path.isfile(path):
        return path, p
    images, masks, _, groups, source = load_data(cfg, p["data"])
    train, val = split_indices(len(images), (0.9, 0.1), seed=cfg["seed"], groups=groups)
    t = p["training"]
    model = tlunet.build_model(p["model"]["name"], input_shape=(*p["data"]["image_size"], p["data"]["channels"]),
                               **{k: v for k, v in p["model"].items() if k not in ("name",)})
    compile_model(model, loss=t["loss"], learning_rate=t["learning_rate"])
    fit(model, make_dataset(images[train], masks[train], t["batch_size"], p["data"].get("augment"), seed=cfg["seed"]),
        make_dataset(images[val], masks[val], t["batch_size"], shuffle=False),
        run_dir=os.path.join(out_dir, "pretrain"), epochs=t["epochs"], verbose=verbose)
    model.save_weights(path)
    with open(os.path.join(out_dir, "pretrain", "source.txt"), "w") as f:
        f.write(f"{source}\n{len(images)} images\n")
    return path, p


def run_experiment(cfg, out_dir="results", verbose=0, log=print):
    """Runs every (run, training fraction, fold) of an experiment config; returns the summary rows.
    Configs with `task: volume` go to `tlunet.experiment3d.run_volume_experiment`."""
    if cfg.get("task") == "volume":
        from tlunet.experiment3d import run_volume_experiment
        return run_volume_experiment(cfg, out_dir, verbose, log)
    if cfg.get("task") == "classification":
        from tlunet.experiment_cls import run_classification_experiment
        return run_classification_experiment(cfg, out_dir, verbose, log)
    import keras

    import tlunet
    from tlunet.data import make_dataset
    from tlunet.plots import dice_vs_params, learning_curves, overlays
    from tlunet.train import configure, fraction_indices, run_stages
    from tlunet.transfer import transfer_weights

    check_sources(cfg, {"data": cfg["data"], **({"pretrain.data": cfg["pretrain"]["data"]} if "pretrain" in cfg else {})})
    notes = {}
    ready, skipped = plan_runs(cfg, notes)
    if skipped:
        log(f"[{cfg['name']}] {_skip_message(cfg, skipped)}")
    if not ready:
        raise ConfigError(f"{cfg['name']}: no run can start: {_skip_message(cfg, skipped)}")
    exp_dir = os.path.join(out_dir, cfg["name"])
    os.makedirs(exp_dir, exist_ok=True)
    configure(cfg["seed"], cfg["deterministic"], cfg["training"]["mixed_precision"])
    start = time.time()
    images, masks, meta, groups, source = load_data(cfg, cfg["data"])
    n_groups = len(set(groups))
    log(f"[{cfg['name']}] profile {cfg['profile']}: {source}, {len(images)} images of {n_groups} "
        f"{'subjects' if n_groups < len(images) else 'cases'} at {cfg['data']['image_size'][0]}x{cfg['data']['image_size'][1]}")
    pretrained = None
    if "pretrain" in cfg:
        pretrained = _pretrain(cfg, exp_dir, verbose)
        with open(os.path.join(exp_dir, "pretrain", "history.csv")) as f:
            rows = list(csv.DictReader(f))
        log(f"[{cfg['name']}] pre-trained {pretrained[1]['model']['name']} on "
            f"{pretrained[1]['data'].get('root', pretrained[1]['data']['kind'])}: {len(rows)} epochs, "
            f"final val Dice {float(rows[-1].get('val_dice', 'nan')):.3f}")
    summary = []
    t = cfg["training"]
    splits = _split(cfg, len(images), groups)
    total = len(ready) * len(cfg["sweep"]["fractions"]) * len(splits)
    log(f"[{cfg['name']}] split by {'subject' if n_groups < len(images) else 'case'}: "
        f"{len(splits[0][0])} train / {len(splits[0][1])} validation / {len(splits[0][2])} test images"
        f"{f' (fold 0 of {len(splits)})' if len(splits) > 1 else ''}; {total} training run{'s' if total > 1 else ''}")
    count = 0
    for run, weights, weights_note in ready:
        for fraction in cfg["sweep"]["fractions"]:
            fold_rows = []
            for k, (train, val, test) in enumerate(splits):
                count += 1
                name = run["name"] + (f"-frac{fraction:g}" if len(cfg["sweep"]["fractions"]) > 1 else "") + \
                    (f"-fold{k}" if cfg["sweep"].get("folds") else "")
                run_dir = os.path.join(exp_dir, name)
                finished = read_done(run_dir)
                if finished is not None:
                    fold_rows.append(finished)
                    log(f"[{cfg['name']}] {name}: done earlier, skipped")
                    continue
                keras.backend.clear_session()
                keras.utils.set_random_seed(cfg["seed"] + k)
                train = fraction_indices(train, fraction, seed=cfg["seed"], groups=groups)
                mcfg = _merge(cfg["model"], run.get("model"))
                kwargs = {key: v for key, v in mcfg.items() if key not in ("name", "encoder_weights")}
                model = tlunet.build_model(mcfg["name"], input_shape=(*cfg["data"]["image_size"], cfg["data"]["channels"]),
                                           encoder_weights=weights, **kwargs)
                if run.get("init") == "pretrain":
                    src = tlunet.build_model(pretrained[1]["model"]["name"], input_shape=model.input_shape[1:],
                                             **{key: v for key, v in pretrained[1]["model"].items() if key != "name"})
                    src.load_weights(pretrained[0])
                    report = transfer_weights(src, model)
                    source_name = pretrained[1]["data"].get("layout") or pretrained[1]["data"]["kind"]
                    weights_note = f"pre-trained on {source_name} ({len(report.copied)} layers copied)"
                train_ds = make_dataset(images[train], masks[train], t["batch_size"], cfg["data"]["augment"], seed=cfg["seed"] + k)
                val_ds = make_dataset(images[val], masks[val], t["batch_size"], shuffle=False) if val else None
                os.makedirs(os.path.join(run_dir, "figures"), exist_ok=True)
                with open(os.path.join(run_dir, "config.yaml"), "w") as f:
                    yaml.safe_dump({k2: v for k2, v in cfg.items() if not k2.startswith("_")} |
                                   {"run": run, "fraction": fraction, "fold": k, "weights_used": weights_note,
                                    "n_train": len(train), "n_val": len(val), "n_test": len(test)}, f, sort_keys=False)
                bar = EpochProgress(f"[{count}/{total}] {name}", sum(s["epochs"] for s in _stages(cfg, run)),
                                    disable=bool(verbose))
                stages = run_stages(model, _stages(cfg, run), train_ds, val_ds, run_dir=run_dir, loss=t["loss"],
                                    optimizer=t["optimizer"], jit_compile=t["jit_compile"], batchnorm=t["batchnorm"],
                                    patience=t["patience"], verbose=verbose, callbacks=[bar])
                bar.close()
                history = {}
                for s in stages:
                    for key, values in s["history"].items():
                        history.setdefault(key, []).extend(values)
                _write_csv(os.path.join(run_dir, "history.csv"),
                           [dict(zip(history, vals)) for vals in zip(*history.values())])
                model.save(os.path.join(run_dir, "model.keras"))
                cases, probs = evaluate_cases(model, images[test], masks[test], [meta[i] for i in test])
                _write_csv(os.path.join(run_dir, "metrics.csv"), cases)
                learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), name)
                overlays(images[test][:8], masks[test][:8], (probs[:8] >= 0.5), os.path.join(run_dir, "figures", "overlays.png"),
                         [c["case"] for c in cases[:8]])
                row = {"run": run["name"], "fraction": fraction, "fold": k, "stages": "+".join(str(s["strategy"]) for s in stages),
                       "trainable_params": stages[-1]["trainable_params"], "weights": weights_note,
                       "epochs": sum(s["epochs_run"] for s in stages), "n_test": len(test)}
                for key in ("dice", "miou", "pixel_accuracy", "hc_abs_error_mm"):
                    row[key], row[key + "_sd"] = _mean(cases, key)
                with open(os.path.join(run_dir, "summary.md"), "w") as f:
                    f.write(f"# {name}\n\n" + "\n".join(f"- {k2}: {v}" for k2, v in row.items()) + "\n")
                with open(os.path.join(run_dir, "done.json"), "w") as f:
                    json.dump(row, f)
                fold_rows.append(row)
                log(f"[{cfg['name']}] {name}: Dice {row['dice']:.3f}, trainable {row['trainable_params']:,}, "
                    f"{time.time() - start:.0f}s")
            summary.append(aggregate_folds(fold_rows, ("dice", "miou", "pixel_accuracy", "hc_abs_error_mm")))
    _write_summary(cfg, exp_dir, summary, source, log, skipped)
    paper = cfg.get("paper") or {}
    dice_vs_params(summary, os.path.join(exp_dir, "dice_vs_params.png"), paper=paper.get("dice"),
                   title=f"{cfg['name']} ({cfg['profile']})",
                   scale=100.0 if paper.get("dice_scale") == "percent" else 1.0)
    log(f"[{cfg['name']}] wrote {os.path.join(exp_dir, 'summary.md')} in {time.time() - start:.0f}s")
    return summary


def aggregate_folds(rows, keys):
    """One summary row from the rows of a run's folds: the mean of each of `keys` (finite values);
    with several folds the spread over folds replaces the spread over cases."""
    out = dict(rows[0])
    for key in keys:
        values = [r[key] for r in rows if np.isfinite(r[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
        if len(rows) > 1:
            out[key + "_sd"] = float(np.std(values)) if values else float("nan")
    out["folds"] = len(rows)
    out.pop("fold", None)
    return out


def _fmt(value, scale=1.0, digits=3):
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value * scale:.{digits}f}"


def _write_summary(cfg, exp_dir, rows, source, log=print, skipped=()):
    paper = cfg.get("paper") or {}
    paper_dice = paper.get("dice", {})
    scale = 100.0 if paper.get("dice_scale") == "percent" else 1.0
    lines = [f"# {cfg['name']} — profile `{cfg['profile']}`", "",
             f"Data: {source}.", "",
             "| run | fraction | trainable params | Dice (ours) | Dice (paper) | mIoU | pixel acc. | HC MAE (mm) | epochs | test cases | initial weights |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    digits = 2 if scale > 1 else 3
    for r in rows:
        sd = f" ± {_fmt(r['dice_sd'], scale, digits)}" if np.isfinite(r.get("dice_sd", float("nan"))) else ""
        lines.append(f"| {r['run']} | {r['fraction']:g} | {r['trainable_params']:,} | {_fmt(r['dice'], scale, digits)}{sd} | "
                     f"{paper_dice.get(r['run'], '—')} | {_fmt(r['miou'], scale, digits)} | "
                     f"{_fmt(r['pixel_accuracy'], scale, digits)} | {_fmt(r['hc_abs_error_mm'], 1, 2)} | "
                     f"{r['epochs']} | {r['n_test']} | {r['weights']} |")
    if skipped:
        lines += ["", f"Not run: {_skip_message(cfg, skipped)}"]
    if paper.get("note"):
        lines += ["", paper["note"]]
    write_tables(exp_dir, lines, rows, log)
