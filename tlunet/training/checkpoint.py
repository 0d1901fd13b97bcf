"""The crash-safe state of a run folder (`RunCheckpoint`), its history, and saving a finished model."""

import contextlib
import csv
import json
import os
import warnings

import keras
import numpy as np

from tlunet.files import atomic_write, dump_json


class TrainingDiverged(ValueError):
    """The loss or the weights of a model in training became NaN or infinite (a learning rate too
    high, most often); the message names the run folder and the epoch."""


def weights_bytes(model, optimizer=True):
    """About how many bytes a weights file of `model` takes: its weights, plus (with `optimizer`)
    its optimizer's variables."""
    opt = getattr(model, "optimizer", None) if optimizer else None
    variables = list(model.weights) + (list(opt.variables) if opt is not None else [])
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def save_model(model, path):
    """Writes `model` to a `.keras` file atomically (`atomic_write`; a named error on a full disk),
    compiled (its optimizer's, loss's and metrics' config) but without the optimizer's state: the
    file is the deliverable, to predict, evaluate or fine-tune from, and the optimizer's slots
    would double or triple its size. `keras.models.load_model` gives it back compiled, with a fresh
    optimizer of the same config. Resumable state (optimizer included) is `RunCheckpoint`'s.

    Returns:
        `path`.
    """
    def write(tmp):
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None or not optimizer.built:  # no state to leave out
            return model.save(tmp)
        # Keras saves the variables of whatever `model.optimizer` holds, so an unbuilt optimizer of
        # the same config stands in while saving: what a model saved before training holds.
        model.optimizer = optimizer.__class__.from_config(optimizer.get_config())
        try:
            model.save(tmp)
        finally:
            model.optimizer = optimizer
    return atomic_write(path, write, needed=weights_bytes(model, optimizer=False))


def read_history(path):
    """history.csv -> {column: [values]}; empty dict if the file does not exist yet."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    number = lambda v: float("nan") if v in ("", "NA", None) else float(v)  # noqa: E731 - CSVLogger writes NA
    return {k: [number(r[k]) for r in rows] for k in (rows[0] if rows else {})}


class RunCheckpoint(keras.callbacks.Callback):
    """Crash-safe training state of one run folder; resumes a killed run where it stopped.

    Does the work of Keras' BackupAndRestore + ModelCheckpoint + CSVLogger + EarlyStopping with one
    writer whose every file is written atomically (`atomic_write`):

    - `backup/epochNNNN.weights.h5`: weights and optimizer state after each epoch; the latest and
      the one before it are kept.
    - `backup/state.json`: the epochs done, which weights file holds them (and the previous one), the
      history so far, and the best-epoch and early-stopping bookkeeping. It is renamed into place
      last, so it only ever names complete files.
    - `history.csv`: one row per finished epoch, rewritten from the state — never a duplicated or
      missing epoch after a crash.
    - `best.keras` (+ `backup/best.weights.h5`): the model of the best epoch by `monitor`, written by
      `save_model` (compiled, without the optimizer's state); a resumed run keeps comparing against
      the best before the crash.

    An epoch whose loss (or validation loss) or weights are NaN or infinite ends training with
    `TrainingDiverged`, before anything of it is written.

    A weights file that cannot be read on resume (disk trouble) falls back to the previous epoch's,
    with a warning naming it. With `patience`, training stops after that many epochs without
    improvement; with `restore_best`, the best epoch's weights are put back at the end.

    Args:
        backup_dir: the run folder whose `backup/` a resumed run reads, when it is not `run_dir`: a
            non-chief worker of a distributed run writes its own folder but resumes from the
            chief's. None: `run_dir`.
    """

    def __init__(self, run_dir, monitor="val_dice", mode="max", patience=None, restore_best=False, backup_dir=None):
        super().__init__()
        self.run_dir, self.monitor, self.mode = run_dir, monitor, mode
        self.patience, self.restore_best = patience, restore_best
        self.backup = os.path.join(run_dir, "backup")
        self.state_path = os.path.join(self.backup, "state.json")
        self.read_backup = os.path.join(backup_dir if backup_dir is not None else run_dir, "backup")  # where a resumed run reads its state

    # ------------------------------------------------------------------ state on disk
    def _read_state(self):
        """The saved state (a dict), or None for a run that has not finished an epoch yet."""
        state_path = os.path.join(self.read_backup, "state.json")
        if not os.path.isfile(state_path):
            return None
        try:
            with open(state_path) as f:
                state = json.load(f)
            state["epoch"], state["history"]  # noqa: B018 - the keys a state must have
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise OSError(f"{state_path}: unreadable resume state ({e}); delete {self.read_backup} "
                          "to train this run from the start") from e
        return state

    def _load(self, state):
        """Loads the weights (and optimizer state) `state` names, or the previous epoch's when those
        cannot be read; returns the epochs done that the loaded file holds."""
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        candidates = [(state["epoch"], state.get("weights"))] + \
            ([(state["previous"]["epoch"], state["previous"]["weights"])] if state.get("previous") else [])
        for i, (epoch, name) in enumerate(candidates):
            path = os.path.join(self.read_backup, name)
            try:
                self.model.load_weights(path)
            except (OSError, ValueError) as e:
                if i + 1 < len(candidates):
                    warnings.warn(f"{path} cannot be read ({type(e).__name__}: {e}); resuming from the epoch "
                                  f"before it ({candidates[i + 1][1]})", stacklevel=2)
                    continue
                raise OSError(f"{path}: cannot be read to resume this run ({e}); delete {self.backup} to train "
                              "it from the start") from e
            return epoch
        return 0

    def _restore(self, state):
        """Sets the epoch counter, history and best-epoch bookkeeping from `state` (None: a new run),
        loading its weights."""
        self.epoch, self.history_rows, self.best, self.best_epoch, self.wait = 0, [], None, None, 0
        self.current, self.previous = None, None
        self.best_weights = None
        if state is None:
            return
        self.epoch = self._load(state)
        if self.epoch != state["epoch"]:  # fell back to the previous epoch's weights
            self.current = dict(state["previous"])
        else:
            self.current = {"epoch": state["epoch"], "weights": state["weights"]}
            self.previous = state.get("previous")
        self.history_rows = [r for r in state["history"] if r["epoch"] < self.epoch]
        self.best, self.best_epoch, self.wait = state.get("best"), state.get("best_epoch"), state.get("wait", 0)
        if self.best_epoch is not None and self.best_epoch >= self.epoch:  # best came after the fallback point
            self.best, self.best_epoch, self.wait = None, None, 0

    def _write_history(self):
        rows = self.history_rows

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                if rows:
                    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
                    writer.writeheader()
                    writer.writerows(rows)
        atomic_write(os.path.join(self.run_dir, "history.csv"), write)

    def _write_state(self, epoch, name):
        """Writes `backup/state.json` for `epoch` done, its weights in `name`."""
        state = {"epoch": epoch + 1, "weights": name, "previous": self.previous, "history": self.history_rows,
                 "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "monitor": self.monitor}
        atomic_write(self.state_path, lambda tmp: dump_json(state, tmp))

    def _remove_partials(self):
        """Deletes the temporary files of writes that were killed."""
        for folder in (self.run_dir, self.backup):
            for name in os.listdir(folder):
                if name.startswith(".") and ".partial" in name:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))

    # ------------------------------------------------------------------ callback
    def on_train_begin(self, logs=None):
        os.makedirs(self.backup, exist_ok=True)
        self._remove_partials()
        self._restore(self._read_state())
        # What keras.callbacks.BackupAndRestore sets, too; always, since Keras never resets it and a
        # model's next stage would otherwise start at this stage's resumed epoch.
        self.model._initial_epoch = self.epoch
        self._write_history()

    def _improved(self, value):
        if value is None or not np.isfinite(value):
            return False
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def _check_finite(self, epoch, logs):
        """Raises `TrainingDiverged` when this epoch's loss or the model's weights are NaN or infinite,
        before anything of the epoch is saved: the backup keeps the last finite epoch."""
        losses = {k: float(v) for k, v in logs.items() if k in ("loss", "val_loss") and not np.isfinite(float(v))}
        weights = [v.path for v in self.model.weights if not np.isfinite(keras.ops.convert_to_numpy(v)).all()]
        if not losses and not weights:
            return
        what = ", ".join(f"{k} {v}" for k, v in losses.items()) or f"the weights of {weights[0]} became NaN or inf"
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        then = ("delete the run's folder first (its saved epochs were trained at this rate), or use another --out"
                if self.current is not None else "no epoch of it was saved")
        raise TrainingDiverged(f"{self.run_dir}: training diverged in epoch {epoch + 1} ({what}); the model is not "
                               f"saved. Lower the learning rate (it was {rate:g}) and run again; {then}")

    def _track_best(self, epoch, value, size):
        """Updates the best-epoch and patience bookkeeping with `epoch`'s monitored `value`, saving
        `best.keras` (and, with `restore_best`, its weights) when it improved."""
        if not self._improved(value):
            self.wait += 1
            return
        self.best, self.best_epoch, self.wait = value, epoch, 0
        save_model(self.model, os.path.join(self.run_dir, "best.keras"))
        if self.restore_best:
            self.best_weights = self.model.get_weights()
            atomic_write(os.path.join(self.backup, "best.weights.h5"), self.model.save_weights, needed=size)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._check_finite(epoch, logs)
        value = logs.get(self.monitor)
        value = float(value) if value is not None else None
        size = weights_bytes(self.model)
        self._track_best(epoch, value, size)
        name = f"epoch{epoch + 1:04d}.weights.h5"
        atomic_write(os.path.join(self.backup, name), self.model.save_weights, needed=size)
        self.history_rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        stale, self.previous, self.current = self.previous, self.current, {"epoch": epoch + 1, "weights": name}
        self._write_state(epoch, name)  # last: it names only complete files
        self._write_history()
        # the weights file two epochs back, unless a state still names it
        if stale and stale["weights"] not in (name, (self.previous or {}).get("weights")):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.backup, stale["weights"]))
        if self.patience and self.wait >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_epoch is not None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            else:  # best epoch came before a resume: its weights are on disk
                self.model.load_weights(os.path.join(self.read_backup, "best.weights.h5"))
