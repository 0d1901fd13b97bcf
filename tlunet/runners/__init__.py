"""Experiment runners: a YAML config in, a results folder with per-run outputs and one table out.

The config's `task` picks the runner — this module holds the only dispatch:

| task | runner | papers |
|---|---|---|
| `image` (default) | `tlunet.runners.image` | Cheng & Lam 2021, Wang et al. 2023 |
| `volume` | `tlunet.runners.volume` | Bressem et al. 2021, Wang et al. 2020 |
| `classification` | `tlunet.runners.classification` | Gare et al. 2022 |

Shared pieces: `tlunet.runners.config` (layering, key checks, paths, weights a run starts from) and
`tlunet.runners.results` (the run folder, done.json, tables). A sixth paper is a folder under
`experiments/` with a `config.yaml` for one of these tasks (and, if it needs a new task, a module
here with `config_from_dict` and `run`, added to `TASKS`).
"""

import os
import shutil
import tempfile

from tlunet.resources import ConfigError, find_config, read_config
from tlunet.runners import classification, image, volume
from tlunet.runners.config import parse_overrides
from tlunet.runners.results import release_folder
from tlunet.train import get_distribution_strategy, set_worker_dirs, worker_role

TASKS = {"image": image, "volume": volume, "classification": classification}


def _task(raw, path):
    task = raw.get("task", "image")
    if task not in TASKS:
        raise ConfigError(f"{path}: task {task!r} is not one of {sorted(TASKS)}")
    return TASKS[task]


def config_from_dict(raw, path, profile=None, overrides=None):
    """A checked config from a dict (relative paths resolve against `path`'s folder)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config is a mapping of keys, not {type(raw).__name__}")
    cfg = _task(raw, path).config_from_dict(raw, path, profile, overrides)
    cfg["task"] = raw.get("task", "image")
    return cfg


def load_config(name_or_path, profile=None, overrides=None):
    """Reads a config (a shipped experiment's name or a YAML path), applies its task's defaults, then
    `profiles[profile]`, then `overrides` (a dict, e.g. from `parse_overrides`), and checks it."""
    path = find_config(name_or_path)
    return config_from_dict(read_config(path), path, profile, overrides)


def run_experiment(cfg, out_dir="results", verbose=0, log=print):
    """Runs every run of a checked config into `out_dir/<name>/`; returns the summary rows. Finished
    runs (with `done.json`) are skipped, unfinished ones resume.

    With `training.distribute: multi_worker` (TF_CONFIG names the cluster) every worker runs this
    with the same config; the chief writes `out_dir`, the others write into a temporary folder they
    delete, and resume from the chief's backups."""
    task = _task(cfg, cfg.get("_config_path", "config"))
    distribute = (cfg.get("training") or {}).get("distribute")
    # created first: TensorFlow's collectives must be set up before other work
    chief, index, count = worker_role(get_distribution_strategy(distribute)) if distribute else (True, 0, 1)
    if not chief:  # only the chief writes results; the others work in a temporary folder
        tmp = tempfile.mkdtemp(prefix=f"tlunet-worker{index}-")
        set_worker_dirs(tmp, out_dir)
        try:
            return task.run(cfg, tmp, verbose, lambda *a: log(f"[worker {index}/{count}]", *a))
        finally:
            set_worker_dirs(None, None)
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        return task.run(cfg, out_dir, verbose, log)
    finally:
        release_folder(os.path.join(out_dir, cfg["name"]))


__all__ = ["TASKS", "ConfigError", "config_from_dict", "load_config", "parse_overrides", "run_experiment"]
