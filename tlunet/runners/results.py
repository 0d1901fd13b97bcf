"""The run directory and the tables, shared by every runner.

results/<experiment>/<run>/ holds `config.yaml` (the effective config and what the run started
from), `history.csv` (every stage's epochs, merged), per-case metrics, `summary.md`, `model.keras`,
`figures/` and, last, `done.json` (the run's summary row: a run with it is finished and skipped
when the experiment is started again). results/<experiment>/summary.{md,csv} gather the rows.
"""

import atexit
import contextlib
import copy
import csv
import fcntl
import json
import os
import socket
import time

import keras
import numpy as np
import yaml

from tlunet.resources import ConfigError
from tlunet.runners.config import check_sources, merge, migrate, plan_runs, skip_message
from tlunet.files import atomic_write
from tlunet.training import configure, save_model


def open_experiment(cfg, out_dir, log, sources=None, input_shape=None, plan=True):
    """What every runner does first: check that the data folders it needs are there (`sources`,
    {where: data block}), decide which runs can start from the weights they name (saying up front
    which are skipped, and stopping if none can; `plan=False` for tasks without pretrained
    encoders), make `out_dir/<name>/`, and seed.

    Returns:
        (ready [(run, weights, note)], skipped [(name, reason)], experiment folder).
    """
    check_sources(cfg, sources)
    ready, skipped = plan_runs(cfg, {}, input_shape=input_shape) if plan else ([(r, None, None) for r in cfg.runs], [])
    if skipped:
        log(f"[{cfg.name}] {skip_message(cfg, skipped)}")
    if not ready:
        raise ConfigError(f"{cfg.name}: no run can start: {skip_message(cfg, skipped)}")
    exp_dir = os.path.join(out_dir, cfg.name)
    try:
        os.makedirs(exp_dir, exist_ok=True)
        lock_folder(exp_dir)
    except PermissionError as e:
        raise PermissionError(f"--out {out_dir}: cannot write there ({e.strerror}); pick a writable folder") from None
    configure(cfg.seed, cfg.deterministic, getattr(cfg.training, "mixed_precision", None))
    return ready, skipped, exp_dir


class FolderInUse(RuntimeError):
    """Another live process is writing into the same run folder."""


_LOCKS = {}


def lock_folder(folder):
    """Takes `folder/.tlunet.lock` for this process (an exclusive `flock`, with the pid, host and
    start time written in it for the message), so no second run writes into the same folder. The
    operating system drops the lock when the process ends, however it ends: a killed run leaves no
    stale lock behind.

    Raises:
        FolderInUse: naming the folder and the pid (and host) holding it.
    """
    folder = os.path.abspath(folder)
    if folder in _LOCKS:
        return _LOCKS[folder][0]
    path = os.path.join(folder, ".tlunet.lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except ValueError:
            holder = {}
        handle.close()
        host = holder.get("host")
        where = f" on host {host}" if host and host != socket.gethostname() else ""
        raise FolderInUse(f"run folder {folder} is in use by pid {holder.get('pid', '?')}{where} (since "
                          f"{holder.get('started', '?')}); wait for it to finish, or use another --out") from None
    handle.seek(0)
    handle.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
              handle)
    handle.flush()
    _LOCKS[folder] = (path, handle)
    atexit.register(_unlock, folder)
    return path


def release_folder(folder):
    """Gives up this process's lock on `folder` (see `lock_folder`), if it holds one."""
    _unlock(os.path.abspath(folder))


def _unlock(folder):
    held = _LOCKS.pop(folder, None)
    if held:
        with contextlib.suppress(OSError):
            fcntl.flock(held[1], fcntl.LOCK_UN)
            held[1].close()


# Settings that change nothing a finished run computed: its own entry of `runs` is compared as `run`
# (others may be added or removed), the sweep's fractions and seeds only name which runs exist (each
# run's name carries its own), TensorBoard and the distribution strategy change how, not what, it
# trains; evaluation.ensemble only adds the seeds' ensemble as a run of its own. The number of folds
# is compared: "-fold0" of 3 folds tests on other cases than of 5.
IGNORED_SETTINGS = ("profile", "paper", "description", "runs", "sweep.fractions", "sweep.seeds",
                    "training.tensorboard", "training.distribute", "evaluation.ensemble")


def _flat(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: value}


# Settings whose default changed: a run's config.yaml without the key was made with the old value.
# (training.precise_bn: runs made before the key existed kept Keras' running BatchNorm averages.)
FORMER_DEFAULTS = {"training": {"precise_bn": False}}


def _with_defaults(saved, defaults, keys):
    """`saved` (settings a run or source was made with) at `keys`, a key it lacks read as its value in
    `defaults`, recursively: a setting added to tlunet after it was made, whose default is what
    tlunet did before (`FORMER_DEFAULTS` where the default has changed since)."""
    defaults = copy.deepcopy(defaults or {})
    for section, former in FORMER_DEFAULTS.items():
        if isinstance(defaults.get(section), dict):
            defaults[section].update({k: v for k, v in former.items() if k in defaults[section]})
    return {k: merge(defaults[k], saved[k]) if isinstance(defaults.get(k), dict) and isinstance(saved.get(k), dict)
            else saved.get(k, defaults.get(k)) for k in keys}


def changed_settings(run_dir, cfg, run, defaults=None):
    """The settings (dotted keys, old -> new) in which `cfg` and `run` differ from what the run in
    `run_dir` was made with (its config.yaml); empty if they agree or the folder has no config.
    A setting that the run's config.yaml lacks reads as its value in `defaults` (the config
    class's `defaults()`): a key added to tlunet after the run was made, whose default is what runs did before."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            saved = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}); delete {run_dir} to rerun that run") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not a run config; delete {run_dir} to rerun that run")
    saved = migrate(saved, saved.get("task", "image"))
    cfg, run = _as_mapping(cfg), _as_mapping(run)
    current = json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")} | {"run": run}))
    keys = [k for k in current if k not in IGNORED_SETTINGS]
    old, new = _flat(_with_defaults(saved, defaults, keys)), _flat({k: current[k] for k in keys})
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in IGNORED_SETTINGS]


def read_done(run_dir, cfg=None, run=None, defaults=None):
    """The summary row a finished run left in `run_dir/done.json`, or None if it has not finished.

    With `cfg` and `run`, a run folder made with other settings is refused (ConfigError listing what
    changed): a finished one is not reused as if it were this config's result, an unfinished one is
    not resumed under new settings. `defaults`: the config class's `defaults()`, for settings an older
    config.yaml lacks (`changed_settings`).
    """
    done = os.path.join(run_dir, "done.json")
    started = os.path.isfile(done) or any(  # an epoch or a stage was saved: the run would resume from it
        name in ("state.json", "done.json") for _, _, files in os.walk(run_dir) for name in files)
    if cfg is not None and started:
        changes = changed_settings(run_dir, cfg, run, defaults)
        if changes:
            shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
            what = "a finished run" if os.path.isfile(done) else "an unfinished run (it would resume)"
            older = any(c.startswith("training.precise_bn: False -> True") for c in changes)
            hint = (" It was made before tlunet recomputed BatchNorm statistics by default: --set "
                    "training.precise_bn=false reuses it as it is." if older else "")
            raise ConfigError(f"{run_dir} holds {what} made with other settings ({shown}). Its result would not "
                              f"be this config's: use another --out, or delete that folder to rerun it.{hint}")
    if not os.path.isfile(done):
        return None
    try:
        with open(done) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{done}: unreadable ({e}); delete it to rerun that run") from e


def start_run(run_dir, seed):
    """Prepares a run: a fresh Keras session seeded with `seed`, and `run_dir/figures/`."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    os.makedirs(os.path.join(run_dir, "figures"), exist_ok=True)


def _as_mapping(value):
    """A parsed config or run as its mapping (a mapping as it is)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def write_config(run_dir, cfg, **record):
    """`config.yaml`: the effective config plus `record` (the run, fold, weights used, ...)."""
    record = {k: _as_mapping(v) for k, v in record.items()}

    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(_as_mapping(cfg) | record, f, sort_keys=False)
    atomic_write(os.path.join(run_dir, "config.yaml"), write)



def merged_history(stages):
    """{metric: values} over the epochs of every stage of a run (`tlunet.train.run_stages` output)."""
    history = {}
    for s in stages:
        for key, values in s["history"].items():
            history.setdefault(key, []).extend(values)
    return history


def summary_row(spec, stages_done, weights_note, cases, measures, **extra):
    """A run's summary row: its name, `extra` (fold, fraction, counts...), stages, trainable
    parameters, initial weights, epochs, and mean and sd over `cases` of each of `measures`."""
    row = {"run": spec.name, **extra, "stages": "+".join(s["name"] for s in stages_done),
           "trainable_params": stages_done[-1]["trainable_params"], "weights": weights_note,
           "epochs": sum(s["epochs_run"] for s in stages_done)}
    for key in measures:
        row[key], row[key + "_sd"] = mean_sd(cases, key)
    return row


def finish_run(run_dir, row, title):
    """Writes the run's `summary.md` and, last, `done.json` (which marks it finished)."""
    def summary(tmp):
        with open(tmp, "w") as f:
            f.write(f"# {title}\n\n" + "\n".join(f"- {k}: {v}" for k, v in row.items()) + "\n")

    def done(tmp):
        with open(tmp, "w") as f:
            json.dump(row, f)
    atomic_write(os.path.join(run_dir, "summary.md"), summary)
    atomic_write(os.path.join(run_dir, "done.json"), done)


def write_csv(path, rows):
    """Rows (dicts) as CSV with the union of their keys as header; nothing for no rows."""
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def mean_sd(rows, key):
    """(mean, sd) of `key` over the rows where it is finite; (nan, nan) if none."""
    values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))


def aggregate_folds(rows, keys):
    """One summary row from the rows of a run's folds (and seeds, each fold's test cases counted once): the mean of each of `keys` (finite values),
    with the spread over folds as `key_sd` when there are several (with one fold `key_sd` stays the
    spread over its test cases); test cases are summed over folds, training cases and epochs
    averaged per fold, and differing initial weights listed."""
    out = dict(rows[0])
    for key in keys:
        mean, sd = mean_sd(rows, key)
        out[key] = mean
        if len(rows) > 1:
            out[key + "_sd"] = sd
    if len(rows) > 1:
        for key in [k for k in out if k.startswith("n_test")]:  # every fold's test cases (once over seeds)
            out[key] = int(sum({r.get("fold", 0): r[key] for r in rows}.values()))
        for key in [k for k in out if k.startswith(("n_train", "n_val")) or k == "epochs"]:  # per fold
            out[key] = round(float(np.mean([r[key] for r in rows])), 1)
        if "weights" in out:
            out["weights"] = "; ".join(dict.fromkeys(str(r["weights"]) for r in rows))
    out["folds"] = len({r.get("fold", 0) for r in rows})
    if any("seed" in r for r in rows):
        out["seeds"] = len({r.get("seed") for r in rows})
    out.pop("fold", None)
    out.pop("seed", None)
    return out


def fmt(value, scale=1.0, digits=3):
    """A number for a table: scaled, fixed digits, "—" for None or non-finite."""
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value * scale:.{digits}f}"


UNITS = "Dice, mIoU, pixel accuracy and NSD are fractions (0–1) in every table tlunet writes; distances in mm"


def paper_value(paper, run, key="dice"):
    """The paper's `key` for `run` as a fraction (0–1) for a table, whatever `paper.dice_scale` it was
    written in, or "—"."""
    value = (paper.get(key) or {}).get(run)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—" if value is None else str(value)
    return fmt(value / (100.0 if paper.get("dice_scale") == "percent" else 1.0))


def markdown_table(columns, rows):
    """A table's markdown lines. `columns`: [(header, align, cell)] with align "l" or "r" and cell a
    function of a row giving its text; a column whose header is None is left out."""
    columns = [c for c in columns if c[0] is not None]
    return ["| " + " | ".join(header for header, _, _ in columns) + " |",
            "|" + "".join("---|" if align == "l" else "---:|" for _, align, _ in columns)] + \
        ["| " + " | ".join(str(cell(r)) for _, _, cell in columns) + " |" for r in rows]


def mean_text(row, key, scale=1.0, digits=3):
    """`row[key]` for a table, with ` ± sd` where the row holds a finite `key_sd`."""
    sd = row.get(key + "_sd", float("nan"))
    return fmt(row[key], scale, digits) + (f" ± {fmt(sd, scale, digits)}" if np.isfinite(sd) else "")


def write_tables(exp_dir, lines, rows, log=print):
    """Writes an experiment's summary.md (the table `lines`) and summary.csv (`rows`) and logs it."""
    with open(os.path.join(exp_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_csv(os.path.join(exp_dir, "summary.csv"), rows)
    log("\n".join(lines))


def cached_source(run_dir, train, settings=None, defaults=None):
    """A source model trained once per experiment folder and reused by every run (X-Unet's saliency
    pre-training, Wang 2020's lesion source, Gare's line segmentation).

    Args:
        run_dir: where `source.keras` and `source.json` live.
        train: () -> (model, info dict); called only when no finished source is there.
        settings: what the source is made from (its data, model and training blocks); a finished
            source made with other settings is refused (ConfigError listing what changed), never
            reused as if it were this config's.
        defaults: the config class's defaults for `settings`' keys: a setting that the saved source lacks
            (added to tlunet after it was made) reads as its default, so an upgrade does not refuse it.

    Returns:
        (model, info).
    """
    path, meta = os.path.join(run_dir, "source.keras"), os.path.join(run_dir, "source.json")
    settings = json.loads(json.dumps(settings)) if settings is not None else None
    if os.path.isfile(path) and os.path.isfile(meta):
        with open(meta) as f:
            info = json.load(f)
        saved = info.get("settings")
        if isinstance(saved, dict) and settings is not None:
            saved = _with_defaults(saved, defaults, settings)
        if settings is not None and saved is not None and saved != settings:
            old, new = _flat(saved), _flat(settings)
            changes = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                       if old.get(k) != new.get(k)]
            raise ConfigError(f"{run_dir} holds a source model made with other settings ({'; '.join(changes[:6])}). "
                              "Use another --out, or delete that folder (and the runs made from it) to retrain it.")
        return keras.models.load_model(path), info
    os.makedirs(run_dir, exist_ok=True)
    model, info = train()
    info = {**info, **({"settings": settings} if settings is not None else {})}
    save_model(model, path)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(info, f)
    atomic_write(meta, write)
    return model, info
