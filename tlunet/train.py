"""Training: compile, resumable fit with the usual callbacks, multi-stage schedules, and switches for
determinism, mixed precision, XLA and tf.distribute.

A run lives in one directory. Killing a run and starting the same command again continues from the
last completed epoch (weights, optimizer state, epoch counter and best-epoch bookkeeping come back
from `RunCheckpoint`, which writes every file atomically); a multi-stage run also skips the stages
already finished.
"""

import contextlib
import csv
import errno
import hashlib
import json
import math
import os
import shutil
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from tlunet.finetune import apply_strategy, trainable_params
from tlunet.losses import get_loss
from tlunet.metrics import segmentation_metrics
from tlunet.selection import iter_layers

MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = {
    "constant": {},
    "cosine": {"warmup_epochs": 0, "min_lr": 0.0},          # linear warm-up, then half a cosine to min_lr
    "poly": {"power": 0.9},                                  # nnU-Net's: lr * (1 - epoch / epochs) ** 0.9
    "plateau": {"factor": 0.5, "patience": 5, "min_lr": 0.0, "monitor": "val_loss"},  # ReduceLROnPlateau
}


def check_lr_schedule(schedule):
    """The schedule as {"name": ..., options} with its defaults; ValueError naming what is wrong.

    Args:
        schedule: None or a name ("constant", "cosine", "poly", "plateau"), or a mapping with `name`
            and that schedule's options (see `LR_SCHEDULES`).
    """
    if schedule is None:
        return {"name": "constant"}
    spec = {"name": schedule} if isinstance(schedule, str) else dict(schedule) if isinstance(schedule, dict) else None
    if spec is None or spec.get("name") not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, or a mapping with `name` and its "
                         f"options. Received: {schedule!r}")
    options = LR_SCHEDULES[spec["name"]]
    unknown = sorted(set(spec) - {"name"} - set(options))
    if unknown:
        raise ValueError(f"lr_schedule {spec['name']!r} has no options {unknown}; valid: {sorted(options)}")
    out = {"name": spec["name"], **options, **{k: v for k, v in spec.items() if k != "name"}}
    for key, value in out.items():
        if key in ("name", "monitor"):
            continue
        whole = key in ("warmup_epochs", "patience")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf or \
                (whole and not isinstance(value, int)) or (key == "factor" and not 0 < value < 1):
            what = 'a whole number >= 0' if whole else 'in (0, 1)' if key == 'factor' else 'a finite number >= 0'
            raise ValueError(f"lr_schedule {spec['name']!r}: {key} must be {what}. Received: {key}={value!r}")
    return out


def lr_at(schedule, epoch, epochs, learning_rate):
    """The learning rate of `epoch` (0-based) of `epochs` under an epoch-wise schedule."""
    spec = check_lr_schedule(schedule)
    if spec["name"] == "cosine":
        warmup = spec["warmup_epochs"]
        if epoch < warmup:
            return learning_rate * (epoch + 1) / (warmup + 1)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return spec["min_lr"] + (learning_rate - spec["min_lr"]) * 0.5 * (1 + math.cos(math.pi * progress))
    if spec["name"] == "poly":
        return learning_rate * (1 - epoch / epochs) ** spec["power"]
    return learning_rate


def lr_schedule_callback(schedule, epochs, learning_rate):
    """A Keras callback applying `schedule` (see `check_lr_schedule`), or None for a constant rate.
    Epoch-wise schedules depend on the epoch only, so a resumed run continues on the same curve."""
    spec = check_lr_schedule(schedule)
    if spec["name"] == "constant":
        return None
    if spec["name"] == "plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor=spec["monitor"], factor=spec["factor"],
                                                 patience=spec["patience"], min_lr=spec["min_lr"])
    return keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr_at(spec, epoch, epochs, learning_rate))


def configure(seed=0, deterministic=False, mixed_precision=None):
    """Process-wide switches; call before building models.

    Args:
        seed: seeds Python, NumPy and TensorFlow (`keras.utils.set_random_seed`).
        deterministic: also enable TensorFlow op determinism, so the same seed gives bit-identical
            weights (some GPU ops then raise instead of running non-deterministically).
        mixed_precision: None, "mixed_float16" (GPU) or "mixed_bfloat16" (CPU/TPU); tlunet heads
            keep their final activation in float32.
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISION}. "
                         f"Received: mixed_precision={mixed_precision!r}")
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(mixed_precision or "float32")


DISTRIBUTE = (None, "mirrored", "multi_worker")
_STRATEGIES = {}
_WORKER_DIRS = {}  # a non-chief worker's temporary results folder -> the chief's (where backups are read)


def get_distribution_strategy(name=None):
    """None/"default" -> the default strategy; "mirrored" -> all local GPUs (or CPUs configured as
    logical devices); "multi_worker" -> MultiWorkerMirroredStrategy (reads TF_CONFIG). One strategy
    per kind and process: TensorFlow's collectives can be set up only once."""
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name not in DISTRIBUTE:
        raise ValueError(f"Unknown distribution {name!r}. Valid: default, mirrored, multi_worker")
    if name not in _STRATEGIES:
        if name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
            _STRATEGIES[name] = tf.distribute.MirroredStrategy(devices)
        else:
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGIES[name]


def worker_role(strategy=None):
    """(is_chief, worker index, worker count) of this process: worker 0 (or the `chief` task) is the
    chief, the only one that writes results and checkpoints."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True, 0, 1
    spec = resolver.cluster_spec().as_dict()
    count = sum(len(v) if isinstance(v, (list, dict)) else 1 for k, v in spec.items() if k in ("chief", "worker"))
    kind, index = resolver.task_type, resolver.task_id or 0
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)
    return chief, (index + (1 if "chief" in spec and kind == "worker" else 0)), count


def weights_digest(model):
    """SHA-1 (12 hex digits) of a model's weights: equal on every worker of a distributed run."""
    digest = hashlib.sha1()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:12]


def set_worker_dirs(temporary, chief):
    """A non-chief worker writes under `temporary` but resumes from the backups the chief wrote under
    `chief` (the Keras multi-worker guide's arrangement); None, None undoes it."""
    _WORKER_DIRS.clear()
    if temporary is not None:
        _WORKER_DIRS[os.path.abspath(temporary)] = os.path.abspath(chief)


def _read_dir(run_dir):
    path = os.path.abspath(run_dir)
    for temporary, chief in _WORKER_DIRS.items():
        if path == temporary or path.startswith(temporary + os.sep):
            return chief + path[len(temporary):]
    return run_dir


def compile_model(model, loss="bce_dice", learning_rate=1e-3, optimizer="adam", metrics=None,
                  jit_compile=False, classes=None, gradient_accumulation=1):
    """Compiles with a fresh optimizer and the segmentation metrics (Dice, mIoU, pixel accuracy).

    Args:
        gradient_accumulation: average the gradients of this many batches before each update, so a
            batch that does not fit in memory (large 3D patches on a small GPU) can be given as
            several smaller ones: batch_size 2 with 4 accumulation steps updates like a batch of 8
            (BatchNorm still sees batches of 2).
    """
    if isinstance(gradient_accumulation, bool) or not isinstance(gradient_accumulation, int) or gradient_accumulation < 1:
        raise ValueError(f"`gradient_accumulation` must be a whole number >= 1. Received: {gradient_accumulation!r}")
    classes = classes or model.output_shape[-1]
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
                  "adamw": keras.optimizers.AdamW}
    if optimizer not in optimizers:
        raise ValueError(f"Unknown optimizer {optimizer!r}. Valid: {list(optimizers)}")
    # a number must be finite and positive; a schedule object is the optimizer's to check
    if isinstance(learning_rate, bool) or (isinstance(learning_rate, (int, float)) and not 0 < learning_rate < math.inf):
        raise ValueError(f"`learning_rate` must be a finite number > 0. Received: learning_rate={learning_rate!r}")
    if isinstance(loss, str) and classes > 1 and loss == "binary_crossentropy":
        raise ValueError(f"loss 'binary_crossentropy' does not fit a {classes}-class softmax output")
    opt = optimizers[optimizer](learning_rate,
                                gradient_accumulation_steps=gradient_accumulation if gradient_accumulation > 1 else None)
    model.compile(optimizer=opt,
                  loss=get_loss(loss) if isinstance(loss, str) else loss,
                  metrics=metrics if metrics is not None else segmentation_metrics(classes),
                  jit_compile=jit_compile)
    return model


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write, needed=0):
    """Writes `path` through `write(tmp_path)` into a temporary name beside it, fsyncs, and renames it
    into place, so `path` is always either the old file or the complete new one — never half of one.
    The file gets the permissions `open` gives a new file (the umask's), whatever the old one had.

    Args:
        needed: bytes the file will take about; a disk with less free space gives an `OSError`
            naming the folder before anything is written (HDF5 can crash the process on a full disk).

    Raises:
        OSError: naming `path`, when the disk is full or the folder is not writable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.basename(path), ""
    for suffix in (".weights.h5", ".keras", ".json", ".csv", ".npz"):
        if base.endswith(suffix):
            base, ext = base[:-len(suffix)], suffix
            break
    tmp = os.path.join(folder, f".{base}.partial{ext}")
    free = _free_bytes(folder)
    if needed and free < 1.5 * needed:
        raise OSError(errno.ENOSPC, f"{folder}: not enough free disk space to write {os.path.basename(path)} "
                      f"({free / 2**20:.1f} MiB free, about {1.5 * needed / 2**20:.1f} MiB needed)")
    try:
        # A leftover of a killed write would keep its old mode through `write` (open and h5py
        # truncate, keeping permissions): a new file gets what `open` gives under the umask.
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(e.errno, f"{path}: could not be written ({e.strerror or e})") from e
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        _fsync(folder)
    return path


def _dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f)


def _free_bytes(folder):
    return shutil.disk_usage(folder).free


def _weights_bytes(model, optimizer=True):
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
    return atomic_write(path, write, needed=_weights_bytes(model, optimizer=False))


class TrainingDiverged(ValueError):
    """The loss or the weights of a model in training became NaN or infinite (a learning rate too
    high, most often); the message names the run folder and the epoch."""


class RunCheckpoint(keras.callbacks.Callback):
    """Crash-safe training state of one run folder; resumes a killed run where it stopped.

    Replaces Keras' BackupAndRestore + ModelCheckpoint + CSVLogger + EarlyStopping with one writer
    whose every file is written atomically (`atomic_write`):

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
    """

    def __init__(self, run_dir, monitor="val_dice", mode="max", patience=None, restore_best=False):
        super().__init__()
        self.run_dir, self.monitor, self.mode = run_dir, monitor, mode
        self.patience, self.restore_best = patience, restore_best
        self.backup = os.path.join(run_dir, "backup")
        self.state_path = os.path.join(self.backup, "state.json")
        # where a resumed run reads its state: its own folder, or for a non-chief worker the chief's
        self.read_backup = os.path.join(_read_dir(run_dir), "backup")

    # ------------------------------------------------------------------ state on disk
    def _read_state(self):
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

    def _write_history(self):
        rows = self.history_rows

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                if rows:
                    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
                    writer.writeheader()
                    writer.writerows(rows)
        atomic_write(os.path.join(self.run_dir, "history.csv"), write)

    # ------------------------------------------------------------------ callback
    def on_train_begin(self, logs=None):
        os.makedirs(self.backup, exist_ok=True)
        for folder in (self.run_dir, self.backup):  # temporary files of a write that was killed
            for name in os.listdir(folder):
                if name.startswith(".") and ".partial" in name:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))
        state = self._read_state()
        self.epoch, self.history_rows, self.best, self.best_epoch, self.wait = 0, [], None, None, 0
        self.current, self.previous = None, None
        self.best_weights = None
        if state is not None:
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

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._check_finite(epoch, logs)
        value = logs.get(self.monitor)
        value = float(value) if value is not None else None
        size = _weights_bytes(self.model)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            save_model(self.model, os.path.join(self.run_dir, "best.keras"))
            if self.restore_best:
                self.best_weights = self.model.get_weights()
                atomic_write(os.path.join(self.backup, "best.weights.h5"), self.model.save_weights, needed=size)
        else:
            self.wait += 1
        name = f"epoch{epoch + 1:04d}.weights.h5"
        atomic_write(os.path.join(self.backup, name), self.model.save_weights, needed=size)
        self.history_rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        stale, self.previous, self.current = self.previous, self.current, {"epoch": epoch + 1, "weights": name}
        state = {"epoch": epoch + 1, "weights": name, "previous": self.previous, "history": self.history_rows,
                 "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "monitor": self.monitor}

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(state, f)
        atomic_write(self.state_path, write)
        self._write_history()
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


def _callbacks(run_dir, monitor, mode, patience, tensorboard, extra):
    os.makedirs(run_dir, exist_ok=True)
    extra = list(extra or [])
    # the schedule first, so the rate it sets is in the logs the checkpoint records; the BatchNorm
    # recompute first, so the checkpoint saves the statistics it set
    first = [c for c in extra if isinstance(c, (keras.callbacks.LearningRateScheduler,
                                                keras.callbacks.ReduceLROnPlateau, _EpochBatchNorm))]
    callbacks = first + [RunCheckpoint(run_dir, monitor, mode, patience=patience, restore_best=bool(patience))]
    extra = [c for c in extra if c not in first]
    if tensorboard:
        try:
            import tensorboard  # noqa: F401 - tf.summary needs it
        except ImportError as e:
            raise ImportError("tensorboard: true needs the tensorboard package: pip install tensorboard") from e
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")))
    return callbacks + list(extra or [])


def _epoch_clock(dataset, depth=64):
    """The `EpochClock` of a tlunet dataset, also behind transformations a user added (`.map`,
    `.take`, `.prefetch`, ...), found through tf.data's input chain; None for other datasets."""
    for _ in range(depth):
        if dataset is None:
            return None
        clock = getattr(dataset, "epoch_clock", None)
        if clock is not None:
            return clock
        dataset = getattr(dataset, "_input_dataset", None)
    return None


class _EpochBatchNorm(keras.callbacks.Callback):
    """`precise_bn` over at most `max_batches` of `data` when each epoch's training ends, before its
    validation and checkpoint, so validation Dice, the choice of the best epoch and `best.keras` use
    statistics of that epoch's weights. Training is unchanged: a BatchNorm that trains normalises
    with the batch's own statistics, not the moving ones."""

    def __init__(self, data, max_batches=50):
        super().__init__()
        self.data, self.max_batches, self.done = data, max_batches, False

    def on_epoch_begin(self, epoch, logs=None):
        self.done = False

    def on_test_begin(self, logs=None):  # the validation inside `fit`
        self._recompute()

    def on_epoch_end(self, epoch, logs=None):  # a fit without validation data
        self._recompute()

    def _recompute(self):
        if not self.done:
            precise_bn(self.model, self.data, self.max_batches)
            self.done = True


def _rereadable(dataset):
    """Whether `precise_bn` can read `dataset` again after `fit` has: a tf.data dataset or a PyDataset."""
    return hasattr(dataset, "take") or isinstance(dataset, keras.utils.PyDataset)


class _DataEpoch(keras.callbacks.Callback):
    """Sets a tlunet dataset's `EpochClock` to `offset` + Keras' epoch before each epoch's pass."""

    def __init__(self, clock, offset=0):
        super().__init__()
        self.clock, self.offset = clock, offset

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.next = self.offset + epoch


def fit(model, train_ds, val_ds=None, *, run_dir, epochs, monitor=None, patience=None,
        tensorboard=False, callbacks=None, verbose="auto", lr_schedule=None, data_epoch=0,
        recompute_bn=True, bn_data=None):
    """`model.fit` with best checkpoint, CSV history, early stopping, optional TensorBoard, and
    resume-from-last-epoch. The model must be compiled.

    Args:
        model: compiled model.
        train_ds, val_ds: tf.data datasets.
        run_dir: where `best.keras`, `history.csv` and the resume backup live.
        epochs: total epochs of this run (a resumed run trains only the remaining ones).
        monitor: metric for the best checkpoint / early stopping; default "val_dice" with
            validation data, else "loss".
        patience: early-stopping patience in epochs (None: no early stopping).
        tensorboard: write TensorBoard logs to run_dir/tensorboard.
        lr_schedule: None (constant), "cosine", "poly", "plateau", or a mapping with `name` and
            options (`check_lr_schedule`); epoch-wise from the optimizer's learning rate. The rate of
            each epoch is recorded in history.csv as `learning_rate`.
        callbacks: extra callbacks.
        verbose: Keras progress bar setting.
        data_epoch: the pass over `train_ds` that epoch 0 takes. tlunet's datasets (`make_dataset`,
            `make_classification_dataset`, `make_patch_dataset`, and those with more
            transformations on top) shuffle and augment pass k from their seed and k alone, so a
            resumed run replays the uninterrupted run's batches; `run_stages` gives each stage its
            own passes. A tf.data dataset of your own restarts its shuffling on a resume, as in
            Keras.
        recompute_bn: set the BatchNorm moving statistics to the average batch statistics of the
            weights (`precise_bn`) at the end of each epoch (before its validation and checkpoint,
            from at most 50 batches) and after training. Keras' moving averages (momentum 0.99) lag
            the weights after a few hundred steps, so a short run would validate and predict with
            statistics of its early epochs. Skipped, with a warning, under a distribution strategy
            or when the data cannot be read again (a Python generator: pass `bn_data`).
        bn_data: the batches `precise_bn` averages over (default: `train_ds`); best without
            augmentation, shuffled, at the training batch size. A tf.data dataset or a PyDataset.

    Returns:
        dict of lists: the history of all epochs of the run so far (read back from history.csv).

    Raises:
        TrainingDiverged: the loss or the weights became NaN or infinite (naming the epoch).
    """
    if not model.compiled:
        raise ValueError(f"Model {model.name!r} is not compiled; call tlunet.train.compile_model first.")
    if monitor is None:
        monitor = "val_dice" if val_ds is not None else "loss"
    mode = "min" if "loss" in monitor else "max"
    if tf.distribute.has_strategy():  # Keras 3 cannot fit under MultiWorkerMirroredStrategy, nor under
        from tlunet._keras_compat import patch_for_distribution  # any strategy when a batch splits unevenly
        patch_for_distribution(model)
    spec = check_lr_schedule(lr_schedule)
    if spec["name"] == "plateau" and spec["monitor"].startswith("val_") and val_ds is None:
        raise ValueError(f"lr_schedule plateau monitors {spec['monitor']!r} but this fit has no validation data; "
                         "give it validation data or set the schedule's monitor to 'loss'")
    schedule = lr_schedule_callback(lr_schedule, epochs, float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    callbacks = ([schedule] if schedule else []) + list(callbacks or [])
    clock = _epoch_clock(train_ds)
    if clock is not None:  # tlunet pipelines: epoch k's batches depend on k alone, so a resume replays them
        callbacks.append(_DataEpoch(clock, data_epoch))
    bn_data = _batchnorm_data(recompute_bn, train_ds if bn_data is None else bn_data)
    if bn_data is not None:
        callbacks.append(_EpochBatchNorm(bn_data))
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose, shuffle=False,  # tf.data shuffles
              callbacks=_callbacks(run_dir, monitor, mode, patience, tensorboard, callbacks))
    if bn_data is not None:  # the final (or restored best) weights, from more batches
        precise_bn(model, bn_data)
    return read_history(os.path.join(run_dir, "history.csv"))


def _batchnorm_data(recompute_bn, data):
    """`data` when `fit` can recompute BatchNorm statistics from it; else None, with a warning if
    `recompute_bn` asked for it."""
    if not recompute_bn:
        return None
    if tf.distribute.has_strategy():
        why = "under a distribution strategy"
    elif not _rereadable(data):
        why = f"from a {type(data).__name__}, which cannot be read again (pass bn_data=, a tf.data dataset)"
    else:
        return data
    warnings.warn(f"fit: BatchNorm moving statistics are not recomputed {why}; the model keeps Keras' running "
                  "averages (recompute_bn=False silences this)", stacklevel=3)
    return None


def read_history(path):
    """history.csv -> {column: [values]}; empty dict if the file does not exist yet."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    number = lambda v: float("nan") if v in ("", "NA", None) else float(v)  # noqa: E731 - CSVLogger writes NA
    return {k: [number(r[k]) for r in rows] for k in (rows[0] if rows else {})}


# model -> (its BatchNorm layers, their traced forward pass): `precise_bn` runs every epoch, and an
# eager forward pass costs several times a traced one. Weak keys: a model that is gone takes its trace.
_FORWARDS = weakref.WeakKeyDictionary()


def _statistics_forward(model, layers):
    """A traced `model(x, training=True)` returning each of `layers`' (moving mean, moving variance)
    after the call; traced with the layers' momentum at 0, as `precise_bn` sets it."""
    key = [id(l) for l in layers]
    cached = _FORWARDS.get(model)
    if cached is None or cached[0] != key:
        @tf.function(reduce_retracing=True, autograph=False)
        def forward(x):
            model(x, training=True)
            return [(l.moving_mean.value, l.moving_variance.value) for l in layers]
        cached = _FORWARDS[model] = (key, forward)
    return cached[1]


def precise_bn(model, dataset, max_batches=200):
    """Sets the moving mean and variance of every trainable BatchNormalization layer of `model` to the
    average of its batch statistics over `dataset`, each batch weighted by its size (PreciseBN: Wu &
    Johnson, "Rethinking 'Batch' in BatchNorm", 2021). Weights are not changed; layers that do not
    train (frozen BatchNorm, which keeps its source's statistics) are left as they are.

    Why: inference uses the moving averages, which after a short training (a few hundred steps at
    Keras' momentum 0.99) lag the final weights: they still hold some of their initial 0/1 and much
    of the early epochs' statistics. On Wang 2020's quick phantom, a U-Net trained for 240 steps
    scored Dice 0.20 on its test volumes with its moving averages and 0.77 with these.

    Args:
        model: a Keras model, after training.
        dataset: a tf.data dataset or PyDataset of inputs (or (inputs, targets) pairs) drawn like the training data:
            shuffled (batches of one subject's neighbouring files would understate the variance),
            without augmentation, at the training batch size.
        max_batches: at most this many batches are used (the first ones: shuffle first).
            A tlunet pipeline gives its first pass every time (its `EpochClock` is set to 0), so
            each call, and each stage of `run_stages`, a resumed run's too, sees the same batches.

    Returns:
        (layers updated, batches used).
    """
    layers = [l for _, l in iter_layers(model) if isinstance(l, keras.layers.BatchNormalization) and l.trainable]
    if not layers:
        return 0, 0
    sums = [[0.0, 0.0] for _ in layers]
    momenta = [l.momentum for l in layers]
    before = [(keras.ops.convert_to_numpy(l.moving_mean), keras.ops.convert_to_numpy(l.moving_variance))
              for l in layers]
    batches = 0
    clock = _epoch_clock(dataset)
    if clock is not None:
        clock.next = 0
    try:
        for l in layers:
            l.momentum = 0.0  # a training-mode call then leaves that batch's statistics in the moving averages
        seen = 0
        batches_of = dataset.take(max_batches) if hasattr(dataset, "take") else \
            (dataset[i] for i in range(min(len(dataset), max_batches)))  # a PyDataset
        forward = _statistics_forward(model, layers)
        for batch in batches_of:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            size = int(keras.ops.shape(x)[0])
            batches, seen = batches + 1, seen + size
            for total, (mean, variance) in zip(sums, forward(x)):  # weighted by size: a short batch counts less
                total[0] = total[0] + size * mean.numpy()
                total[1] = total[1] + size * variance.numpy()
        if not batches:
            raise ValueError("precise_bn: the dataset has no batches")
        for total, l in zip(sums, layers):
            l.moving_mean.assign(total[0] / seen)
            l.moving_variance.assign(total[1] / seen)
    except BaseException:  # interrupted or failed: the model keeps the statistics it had
        for l, (mean, variance) in zip(layers, before):
            l.moving_mean.assign(mean)
            l.moving_variance.assign(variance)
        raise
    finally:
        for l, m in zip(layers, momenta):
            l.momentum = m
    return len(layers), batches


def run_stages(model, stages, train_ds, val_ds=None, *, run_dir, loss="bce_dice", optimizer="adam",
               jit_compile=False, batchnorm="follow", lr_schedule=None, gradient_accumulation=1, bn_data=None,
               **fit_kwargs):
    """Trains through a schedule of stages, each with its own strategy, epochs and learning rate —
    e.g. Cheng & Lam's V-Unet: `[{"strategy": "frozen_encoder", "epochs": 10, "learning_rate": 1e-3},
    {"strategy": "all", "epochs": 10, "learning_rate": 1e-5}]`.

    Each stage applies its strategy, compiles with a fresh optimizer and fits in
    `run_dir/stage{i}_{strategy}`. A finished stage leaves its final weights and a `done.json`; a
    restarted run loads the last finished stage's weights and resumes the stage in progress.

    With `bn_data` (batches drawn as `precise_bn` wants them), each stage ends with `precise_bn`
    on the BatchNorm layers it trained, before its weights are saved (its `done.json` says
    `"precise_bn": true`; a finished stage whose file does not say so is recomputed when loaded): a
    layer that a later stage freezes keeps statistics of the weights it finished with, not the
    lagging running averages, and runs in later stages (inference mode) with those.

    Returns:
        list of per-stage dicts {name, strategy, trainable_params, epochs_run, history}.
    """
    results = []
    passes = 0  # each stage takes its own passes over the data (from its configured epochs)
    for i, stage in enumerate(stages):
        data_epoch, passes = passes, passes + int(stage.get("epochs", 0))
        unknown = set(stage) - {"strategy", "epochs", "learning_rate", "name", "lr_schedule"}
        if unknown:
            raise ValueError(f"Stage {i} has unknown keys {sorted(unknown)}; valid: strategy, epochs, "
                             "learning_rate, lr_schedule, name")
        label = stage["strategy"] if isinstance(stage["strategy"], str) else "custom"  # a dict strategy
        name = stage.get("name") or f"stage{i}_{label}".replace(",", "_")
        if os.path.basename(str(name)) != str(name) or str(name) in (".", "..") or os.path.isabs(str(name)):
            raise ValueError(f"Stage {i} name {name!r} must be a plain folder name (it is a folder of {run_dir})")
        stage_dir = os.path.join(run_dir, name)
        done = os.path.join(stage_dir, "done.json")
        weights = os.path.join(stage_dir, "final.weights.npz")
        apply_strategy(model, stage["strategy"], batchnorm=batchnorm)
        if os.path.isfile(done):
            with np.load(weights) as saved:
                model.set_weights([saved[f"w{k}"] for k in range(len(saved.files))])
            with open(done) as f:
                results.append(json.load(f))
            if bn_data is not None and not results[-1].get("precise_bn"):  # finished before stages recomputed them
                precise_bn(model, bn_data)
            continue
        compile_model(model, loss=loss, learning_rate=stage.get("learning_rate", 1e-3),
                      optimizer=optimizer, jit_compile=jit_compile, gradient_accumulation=gradient_accumulation)
        # with bn_data, fit recomputes this stage's trainable BatchNorm layers each epoch and at its end
        history = fit(model, train_ds, val_ds, run_dir=stage_dir, epochs=stage["epochs"],
                      recompute_bn=bn_data is not None, bn_data=bn_data,
                      lr_schedule=stage.get("lr_schedule", lr_schedule), data_epoch=data_epoch, **fit_kwargs)
        values = model.get_weights()
        atomic_write(weights, lambda tmp: np.savez(tmp, **{f"w{k}": w for k, w in enumerate(values)}),
                     needed=sum(w.nbytes for w in values))
        result = {"name": name, "strategy": stage["strategy"], "trainable_params": trainable_params(model),
                  "epochs_run": len(next(iter(history.values()), [])), "history": history,
                  **({"precise_bn": True} if bn_data is not None else {})}
        atomic_write(done, lambda tmp: _dump_json(result, tmp))
        shutil.rmtree(os.path.join(stage_dir, "backup"), ignore_errors=True)  # the stage's final weights are kept
        results.append(result)
    return results
