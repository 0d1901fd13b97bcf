"""Experiment runners: a YAML config in, a results folder with per-run outputs and one table out.

The config's `task` picks the runner from `TASKS`:

| task | runner | papers |
|---|---|---|
| `image` (default) | `tlunet.runners.image.ImageRunner` | Cheng & Lam 2021, Wang et al. 2023 |
| `volume` | `tlunet.runners.volume.VolumeRunner` | Bressem et al. 2021, Wang et al. 2020 |
| `classification` | `tlunet.runners.classification.ClassificationRunner` | Gare et al. 2022 |

Every runner is a `tlunet.runners.base.Runner`: the plan, skipping and resuming, ensembles and the
tables are there; a task supplies its hooks and its config class (`tlunet.runners.sections`). A
new paper is a folder under `experiments/` with a `config.yaml` for one of these tasks; a new task
is a module here with a `Runner` subclass, added to `TASKS` (see docs/architecture.md).
"""

import os
import shutil
import tempfile

from tlunet.resources import ConfigError, find_config, read_config
from tlunet.runners.classification import ClassificationRunner
from tlunet.runners.config import apply_profile, parse_overrides, resolve_precise_bn
from tlunet.runners.image import ImageRunner
from tlunet.runners.results import release_folder
from tlunet.runners.volume import VolumeRunner
from tlunet.training import get_distribution_strategy, worker_role

TASKS = {"image": ImageRunner, "volume": VolumeRunner, "classification": ClassificationRunner}


def _runner(task, path):
    if task not in TASKS:
        raise ConfigError(f"{path}: task {task!r} is not one of {sorted(TASKS)}")
    return TASKS[task]


def config_from_dict(raw, path, profile=None, overrides=None):
    """A checked config (the task's `Experiment`) from a dict: the task's defaults, the dict, its
    `profiles[profile]` and `overrides` laid over each other; relative paths resolve against `path`'s folder."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config is a mapping of keys, not {type(raw).__name__}")
    config = _runner(raw.get("task", "image"), path).CONFIG
    merged = apply_profile(raw, path, config.defaults(), profile, overrides)
    merged.pop("task", None)
    if "precise_bn" in config.defaults().get("training", {}):
        resolve_precise_bn(merged)
    return config.parse(merged, path, profile or "default")


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
    runner = TASKS[cfg.TASK]
    distribute = getattr(cfg.training, "distribute", None)
    # created first: TensorFlow's collectives must be set up before other work
    chief, index, count = worker_role(get_distribution_strategy(distribute)) if distribute else (True, 0, 1)
    if not chief:  # only the chief writes results; the others work in a temporary folder
        tmp = tempfile.mkdtemp(prefix=f"tlunet-worker{index}-")
        try:
            return runner(cfg, tmp, verbose, lambda *a: log(f"[worker {index}/{count}]", *a), resume_from=out_dir).run()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        return runner(cfg, out_dir, verbose, log).run()
    finally:
        release_folder(os.path.join(out_dir, cfg.name))


__all__ = ["TASKS", "ConfigError", "config_from_dict", "load_config", "parse_overrides", "run_experiment"]
