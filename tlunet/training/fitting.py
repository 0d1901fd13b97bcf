"""`fit`: `model.fit` with the run folder's checkpoint, history, schedule and BatchNorm recompute."""

import os

import keras
import tensorflow as tf

from tlunet.training.batchnorm import EpochBatchNorm, batchnorm_data, precise_bn
from tlunet.training.checkpoint import RunCheckpoint, read_history
from tlunet.training.clock import DataEpoch, epoch_clock
from tlunet.training.schedules import check_lr_schedule, lr_schedule_callback


def fit(model, train_ds, val_ds=None, *, run_dir, epochs, monitor=None, patience=None,
        tensorboard=False, callbacks=None, verbose="auto", lr_schedule=None, data_epoch=0,
        recompute_bn=True, bn_data=None, backup_dir=None):
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
            from at most 50 batches) and after training, so validation and prediction use
            statistics of the current weights rather than Keras' lagging moving averages (momentum
            0.99). Skipped, with a warning, under a distribution strategy or when the data cannot
            be read again (a Python generator: pass `bn_data`).
        bn_data: the batches `precise_bn` averages over (default: `train_ds`); best without
            augmentation, shuffled, at the training batch size. A tf.data dataset or a PyDataset.
        backup_dir: the run folder whose `backup/` a resumed run reads, when it is not `run_dir`
            (a non-chief worker of a distributed run, which writes a folder of its own and resumes
            from the chief's); see `RunCheckpoint`.

    Returns:
        dict of lists: the history of all epochs of the run so far (read back from history.csv).

    Raises:
        TrainingDiverged: the loss or the weights became NaN or infinite (naming the epoch).
    """
    monitor = _prepare(model, val_ds, monitor, lr_schedule)
    mode = "min" if "loss" in monitor else "max"
    callbacks = _epoch_callbacks(model, train_ds, epochs, lr_schedule, data_epoch, callbacks)
    bn_data = batchnorm_data(recompute_bn, train_ds if bn_data is None else bn_data)  # warns fit's caller
    if bn_data is not None:
        callbacks.append(EpochBatchNorm(bn_data))
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose, shuffle=False,  # tf.data shuffles
              callbacks=_callbacks(run_dir, monitor, mode, patience, tensorboard, callbacks, backup_dir))
    if bn_data is not None:  # the final (or restored best) weights, from more batches
        precise_bn(model, bn_data)
    return read_history(os.path.join(run_dir, "history.csv"))


def _prepare(model, val_ds, monitor, lr_schedule):
    """Checks what `fit` was given and readies `model` for the current strategy; returns the monitor."""
    if not model.compiled:
        raise ValueError(f"Model {model.name!r} is not compiled; call tlunet.train.compile_model first.")
    if monitor is None:
        monitor = "val_dice" if val_ds is not None else "loss"
    if tf.distribute.has_strategy():  # Keras 3 cannot fit under MultiWorkerMirroredStrategy, nor under
        from tlunet._keras_compat import patch_for_distribution  # any strategy when a batch splits unevenly
        patch_for_distribution(model)
    spec = check_lr_schedule(lr_schedule)
    if spec["name"] == "plateau" and spec["monitor"].startswith("val_") and val_ds is None:
        raise ValueError(f"lr_schedule plateau monitors {spec['monitor']!r} but this fit has no validation data; "
                         "give it validation data or set the schedule's monitor to 'loss'")
    return monitor


def _epoch_callbacks(model, train_ds, epochs, lr_schedule, data_epoch, extra):
    """The learning-rate schedule's callback (if any), `extra`, and the one that sets a tlunet
    dataset's epoch clock."""
    schedule = lr_schedule_callback(lr_schedule, epochs, float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    callbacks = ([schedule] if schedule else []) + list(extra or [])
    clock = epoch_clock(train_ds)
    if clock is not None:  # tlunet pipelines: epoch k's batches depend on k alone, so a resume replays them
        callbacks.append(DataEpoch(clock, data_epoch))
    return callbacks


def _callbacks(run_dir, monitor, mode, patience, tensorboard, extra, backup_dir=None):
    """All of `fit`'s callbacks, in the order they must run: schedule and BatchNorm recompute, then
    the checkpoint, then TensorBoard and the rest of `extra`."""
    os.makedirs(run_dir, exist_ok=True)
    extra = list(extra or [])
    # the schedule first, so the rate it sets is in the logs the checkpoint records; the BatchNorm
    # recompute first, so the checkpoint saves the statistics it set
    first = [c for c in extra if isinstance(c, (keras.callbacks.LearningRateScheduler,
                                                keras.callbacks.ReduceLROnPlateau, EpochBatchNorm))]
    callbacks = first + [RunCheckpoint(run_dir, monitor, mode, patience=patience, restore_best=bool(patience),
                                       backup_dir=backup_dir)]
    extra = [c for c in extra if c not in first]
    if tensorboard:
        try:
            import tensorboard  # noqa: F401 - tf.summary needs it
        except ImportError as e:
            raise ImportError("tensorboard: true needs the tensorboard package: pip install tensorboard") from e
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")))
    return callbacks + list(extra or [])
