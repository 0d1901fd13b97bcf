"""The skeleton every experiment runs through, whatever its task.

`Runner.run` checks the data and weights, loads the data, splits it, lays out one flat plan of
jobs (runs × training fractions × folds × seeds), trains what has not finished (a finished run is
skipped, an unfinished one resumes, one made with other settings is refused), averages the seeds'
models where the config asks, aggregates each run's repeats (mean ± sd) and writes the tables.

A task subclasses `Runner` and supplies its hooks: `load`, `make_splits`, `describe`, `prepare`
(source models), `train_and_evaluate` (one job: its summary row), `row_text` and `summary_lines`;
an image task also `evaluate_model` (for ensembles).
"""

import dataclasses
import itertools
import os
import time
from typing import Any

import keras
import numpy as np
import yaml

from tlunet.data import experiment_splits, fraction_indices
from tlunet.ensemble import ensemble_model, file_sha1
from tlunet.resources import ConfigError
from tlunet.plots import learning_curves
from tlunet.progress import EpochProgress
from tlunet.runners.config import check_split_sizes, skip_message
from tlunet.transfer import build_transfer_model
from tlunet.runners.results import (aggregate_folds, cached_source, finish_run, mean_sd, merged_history,
                                    open_experiment, read_done, start_run, write_config, write_csv, write_tables)
from tlunet.runners.schema import plain
from tlunet.runners.sections import RunSpec
from tlunet.training import compile_model, fit, run_stages, save_model


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of the plan: which run, the weights it starts from, its part of the data
    (training cases cut to `fraction`), and the seed of its initialisation and shuffling."""
    spec: RunSpec
    weights: Any
    weights_note: Any
    fraction: float
    fold: int
    repeat_seed: Any  # the sweep's seed; None when the sweep has no seeds
    seed: int
    name: str
    label: str
    train: list
    val: list
    test: list

    @property
    def seed_field(self):
        """`{"seed": the sweep's seed}` for the job's row; empty without seeds."""
        return {"seed": self.repeat_seed} if self.repeat_seed is not None else {}

    @property
    def group(self):
        """The name of the run without its seed: the seeds of one group are averaged in an ensemble."""
        return self.name[:-len(f"-seed{self.repeat_seed}")] if self.repeat_seed is not None else self.name


class Runner:
    """One experiment from a checked config (an `Experiment`) into `out_dir/<name>/`."""
    CONFIG = None  # the task's Experiment subclass
    MEASURES = ()  # the row keys averaged over repeats
    PLANS_WEIGHTS = True  # runs name encoder weights: decide up front which can start

    def __init__(self, cfg, out_dir="results", verbose=0, log=print, resume_from=None):
        """`resume_from`: a non-chief worker's: the chief's results folder, whose checkpoints a run
        resumes from (the worker writes its own `out_dir`)."""
        self.cfg, self.out_dir, self.verbose = cfg, out_dir, verbose
        self.exp_dir = os.path.join(out_dir, cfg.name)
        self.resume_from = resume_from
        self._log = log

    def backup_dir(self, folder):
        """Where the run in `exp_dir/folder` resumes from: the chief's counterpart on a non-chief
        worker, else None (its own folder)."""
        return os.path.join(self.resume_from, self.cfg.name, folder) if self.resume_from else None

    def log(self, text):
        """Logs one line, prefixed with the experiment's name."""
        self._log(f"[{self.cfg.name}] {text}")

    # ------------------------------------------------------------------ hooks
    def data_blocks(self):
        """{where: data block} the experiment reads (checked before any work)."""
        blocks = {"data": self.cfg.data.to_block()}
        if getattr(self.cfg, "pretrain", None) is not None:
            blocks["pretrain.data"] = self.cfg.pretrain.data.to_block()
        return blocks

    def weights_shape(self):
        """The input shape encoder weights files are tried at (None: the model's own small shape)."""
        return None

    def load(self):
        """Loads the data; returns (groups: one per case, description)."""
        raise NotImplementedError

    def make_splits(self, groups):
        """[(train, validation, test) case indices], one per fold."""
        raise NotImplementedError

    def describe(self, groups, splits, total):
        """The log line that opens the experiment."""
        raise NotImplementedError

    def prepare(self):
        """Trains (or reuses) the source models the runs start from: the `pretrain` block's, if any."""
        self.source_model = self.pretrain() if getattr(self.cfg, "pretrain", None) is not None else None

    def pretrain(self):
        """The source model of the `pretrain` block (see `source_model`)."""
        raise NotImplementedError

    def train_and_evaluate(self, job):
        """Trains and tests one job; writes its run folder; returns its summary row."""
        raise NotImplementedError

    def row_text(self, row):
        """A finished job's measures, for the log."""
        return f"Dice {row['dice']:.3f}"

    def summary_lines(self, rows, source):
        """The summary's markdown lines between its title and its notes: the data, the table(s) and
        what their numbers are."""
        raise NotImplementedError

    def after_summary(self, rows):
        """Figures drawn from the summary rows."""

    def evaluate_model(self, model, run_dir, name, test):
        """Tests a model on the `test` cases, writing metrics and figures; the per-case rows."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the skeleton
    def run(self):
        """Runs every job of the plan; returns the summary rows."""
        ready, skipped, self.exp_dir = open_experiment(self.cfg, self.out_dir, self._log, self.data_blocks(),
                                                       input_shape=self.weights_shape(), plan=self.PLANS_WEIGHTS)
        start = time.time()
        groups, source = self.load()
        splits = self.make_splits(groups)
        jobs = self.plan(ready, splits, groups)
        self.log(self.describe(groups, splits, len(jobs)))
        self.prepare()
        rows = {}
        for job in jobs:
            rows[job.name] = self._done_or_train(job, start)
        summary = self.aggregate(jobs, rows)
        write_tables(self.exp_dir, self.summary(summary, source, skipped), summary, self._log)
        self.after_summary(summary)
        self.log(f"wrote {os.path.join(self.exp_dir, 'summary.md')} in {time.time() - start:.0f}s")
        return summary

    def plan(self, ready, splits, groups):
        """The jobs: every ready run × training fraction × fold × seed, in that order."""
        fractions = list(getattr(self.cfg.sweep, "fractions", None) or [1.0])
        seeds = self.cfg.seeds
        combos = list(itertools.product(ready, fractions, enumerate(splits), seeds))
        jobs = []
        for count, ((spec, weights, note), fraction, (k, (train, val, test)), s) in enumerate(combos, 1):
            name = spec.name + (f"-frac{fraction:g}" if len(fractions) > 1 else "") + \
                (f"-fold{k}" if len(splits) > 1 else "") + (f"-seed{s}" if s is not None else "")
            # seeds vary the initialisation, the shuffling and the fraction drawn; never the split
            subset = fraction_indices(train, fraction, seed=self.cfg.seed if s is None else s, groups=groups)
            jobs.append(Job(spec, weights, note, fraction, k, s, self.cfg.seed + k if s is None else s, name,
                            f"[{count}/{len(combos)}] {name}", subset, val, test))
        return jobs

    def _done_or_train(self, job, start):
        run_dir = os.path.join(self.exp_dir, job.name)
        row = read_done(run_dir, self.cfg, job.spec, self.CONFIG.defaults())
        if row is not None:
            missing = [m for m in self.MEASURES if m not in row]
            self.log(f"{job.name}: done earlier, skipped" + (
                f"; made by an older tlunet, it has no {', '.join(missing)} (shown as nan: delete {run_dir} to "
                "rerun it)" if missing else ""))
            return {**{m: float("nan") for m in missing}, **row}
        row = self.train_and_evaluate(job)
        self.log(f"{job.name}: {self.row_text(row)}, {time.time() - start:.0f}s"
                 + (f", weights sha1 {row['weights_sha1']}" if "weights_sha1" in row else ""))
        return row

    def summary(self, rows, source, skipped):
        """summary.md's lines: the title, the task's `summary_lines`, the runs not run and the paper's note."""
        cfg, paper = self.cfg, self.cfg.paper
        return [f"# {cfg.name} — profile `{cfg.profile}`", "", *self.summary_lines(rows, source)] + \
            (["", f"Not run: {skip_message(cfg, skipped)}"] if skipped else []) + \
            (["", paper["note"]] if paper.get("note") else [])

    def aggregate(self, jobs, rows):
        """One row per run and fraction: the mean ± sd over its folds and seeds; then, where the config
        averages the seeds' models, the ensemble of each fold's seeds (made here, or reused), aggregated
        over folds."""
        summary = []
        for _, group in itertools.groupby(jobs, key=lambda j: (j.spec.name, j.fraction)):
            group = list(group)
            summary.append(aggregate_folds([rows[j.name] for j in group], self.MEASURES))
            if getattr(getattr(self.cfg, "evaluation", None), "ensemble", False):
                folds = [list(g) for _, g in itertools.groupby(group, key=lambda j: j.fold)]
                ensembles = [self.ensemble_run(members, [rows[j.name] for j in members]) for members in folds]
                row = aggregate_folds(ensembles, self.MEASURES)
                if len(ensembles) == 1:  # one model per fold: its ± is over folds, and one fold has none
                    row.update({k + "_sd": float("nan") for k in self.MEASURES})
                summary.append(row)
        return summary

    def check_splits(self, splits, subjects, validation=True):
        """Stops before training when a split leaves a part empty (`check_split_sizes`)."""
        check_split_sizes(self.cfg, splits, subjects, validation=validation)

    # ------------------------------------------------------------------ shared by the tasks' hooks
    def fit_stages(self, job, model, datasets, bn_data):
        """Trains `model` through the job's stages in its run folder, with a progress bar (inside the
        config's distribution scope, which the caller has entered); `datasets()` gives the training
        and validation datasets. `run_stages`' list of stages."""
        stages = job.spec.stages(self.cfg.training)
        bar = EpochProgress(job.label, sum(s["epochs"] for s in stages), disable=bool(self.verbose))
        train_ds, val_ds = datasets()
        done = run_stages(model, stages, train_ds, val_ds, run_dir=os.path.join(self.exp_dir, job.name),
                          verbose=self.verbose, callbacks=[bar], bn_data=bn_data,
                          backup_dir=self.backup_dir(job.name), **self.cfg.training.fit_options())
        bar.close()
        return done

    def write_history(self, job, done):
        """history.csv and the learning curves of a job's stages."""
        run_dir = os.path.join(self.exp_dir, job.name)
        history = merged_history(done)
        write_csv(os.path.join(run_dir, "history.csv"), [dict(zip(history, v)) for v in zip(*history.values())])
        learning_curves(history, os.path.join(run_dir, "figures", "learning_curves.png"), job.name)

    def source_model(self, train, describe):
        """The `pretrain` block's source model: trained once by `train()` -> (model, info) in
        `exp_dir/pretrain`, reused while its settings are the config's; logs `describe(model, info)`."""
        p, keys = self.cfg.pretrain, ("seed", "data", "model", "training")
        model, info = cached_source(os.path.join(self.exp_dir, "pretrain"), train, settings=p.settings(self.cfg.seed),
                                    defaults={k: v for k, v in self.CONFIG.defaults().items() if k in keys})
        self.log(describe(model, info))
        return model

    def transfer_model(self, job, input_shape, classes):
        """The job's model built by its `transfer` method from the source model (Wang et al. 2020's
        methods, `tlunet.build_transfer_model`), and the note saying which weights it starts from."""
        method = job.spec.get("transfer")
        model, report = build_transfer_model(method, self.source_model, classes=classes, input_shape=input_shape)
        return model, (f"{method}: {len(report.copied)} layers from the source model" if method != "scratch"
                       else "scratch: random init")

    def fit_source(self, model, training, datasets, label="source (pre-training)", folder="pretrain"):
        """Compiles and fits a source model in `exp_dir/folder` with `training` (a Training section);
        `datasets()` gives (train, validation, batches for BatchNorm statistics), made after compiling. Its
        history."""
        compile_model(model, loss=plain(training.loss), learning_rate=training.learning_rate,
                      optimizer=plain(training.optimizer), gradient_accumulation=training.gradient_accumulation)
        train_ds, val_ds, bn_data = datasets()
        return fit(model, train_ds, val_ds, run_dir=os.path.join(self.exp_dir, folder), epochs=training.epochs,
                   verbose=self.verbose, lr_schedule=plain(training.lr_schedule), tensorboard=training.tensorboard,
                   callbacks=[EpochProgress(label, training.epochs, disable=bool(self.verbose))],
                   recompute_bn=training.precise_bn, bn_data=bn_data, backup_dir=self.backup_dir(folder))

    # ------------------------------------------------------------------ ensembles
    def ensemble_run(self, members, member_rows):
        """The run `<group>-ensemble`: the mean probability of the seeds' models `members` (jobs of one
        fold), tested like a trained run; its model.keras exportable as any run's. Its row."""
        first = members[0]
        name = first.group + "-ensemble"
        run_dir = os.path.join(self.exp_dir, name)
        paths = [os.path.join(self.exp_dir, j.name, "model.keras") for j in members]
        for p in paths:
            if not os.path.isfile(p):
                raise ConfigError(f"{p} is missing, so {name} cannot average it; delete {os.path.dirname(p)} to "
                                  "retrain that seed")
        listed = [{"run": j.name, "seed": j.repeat_seed, "sha1": file_sha1(p)} for j, p in zip(members, paths)]
        row = read_done(run_dir, self.cfg, first.spec, self.CONFIG.defaults())
        if row is not None and _recorded_members(run_dir) == listed:
            self.log(f"{name}: done earlier, skipped")
            return row
        if row is not None:  # other seeds, or a seed retrained since: the old ensemble is not these models' mean
            os.remove(os.path.join(run_dir, "done.json"))
            self.log(f"{name}: its members changed since it was made; made again")
        return self._make_ensemble(name, run_dir, members, member_rows, paths, listed)

    def _make_ensemble(self, name, run_dir, members, member_rows, paths, listed):
        first = members[0]
        start_run(run_dir, self.cfg.seed)
        model = ensemble_model([keras.models.load_model(p, compile=False) for p in paths],
                               name=f"{first.spec.name}_ensemble")
        seeds = ", ".join(str(j.repeat_seed) for j in members)
        note = f"mean of the models of seeds {seeds} ({member_rows[0]['weights']})"
        write_config(run_dir, self.cfg, run=first.spec, fraction=first.fraction, fold=first.fold,
                     n_test=len(first.test), weights_used=note, ensemble=listed)
        save_model(model, os.path.join(run_dir, "model.keras"))
        cases = self.evaluate_model(model, run_dir, name, first.test)
        # parameters and epochs: the members' sums (what the ensemble holds and cost to train)
        row = {"run": f"{first.spec.name} (ensemble)", "fraction": first.fraction, "fold": first.fold,
               "n_test": len(first.test), "stages": "ensemble",
               "trainable_params": int(sum(r["trainable_params"] for r in member_rows)), "weights": note,
               "epochs": float(sum(r["epochs"] for r in member_rows)), "members": len(members)}
        for key in self.MEASURES:
            row[key], row[key + "_sd"] = mean_sd(cases, key)
        finish_run(run_dir, row, name)
        self.log(f"{name}: Dice {row['dice']:.3f} (the mean probability of seeds {seeds})")
        return row


def run_split(saved, groups):
    """{"train", "val", "test": case indices} of the run whose config.yaml is `saved`, over cases loaded by
    its data block (`groups` their subjects): the split its experiment drew for its fold, the training
    part cut to its fraction as the plan cut it."""
    sweep = saved.get("sweep") or {}
    train, val, test = experiment_splits(len(groups), saved["data"]["split"], saved.get("seed", 0), groups,
                                         sweep.get("folds"))[saved.get("fold") or 0]
    fraction = saved.get("fraction", 1.0) or 1.0
    if fraction < 1:  # drawn with the repeat's seed, or the config's without repeats
        seed = saved.get("run_seed", 0) if sweep.get("seeds") else saved.get("seed", 0)
        train = fraction_indices(train, fraction, seed=seed, groups=groups)
    return {"train": list(train), "val": list(val), "test": list(test)}


def _recorded_members(run_dir):
    """The `ensemble` list an ensemble run's config.yaml records (None if unreadable)."""
    try:
        with open(os.path.join(run_dir, "config.yaml")) as f:
            return (yaml.safe_load(f) or {}).get("ensemble")
    except (OSError, yaml.YAMLError):
        return None


def is_finite(row, key):
    """Whether the row holds a finite value at `key`."""
    return np.isfinite(row.get(key, float("nan")))
