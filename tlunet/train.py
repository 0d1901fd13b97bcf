"""Training: compile, resumable fit with the usual callbacks, multi-stage schedules, and switches for
determinism, mixed precision, XLA and tf.distribute.

A run lives in one directory. Killing a run and starting the same command again continues from the
last completed epoch (weights, optimizer state and epoch counter come back from
`keras.callbacks.BackupAndRestore`); a multi-stage run also skips the stages already finished.
"""

import csv
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tlunet.finetune import apply_strategy, trainable_params
from tlunet.losses import get_loss
from tlunet.metrics import segmentation_metrics

MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")


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


def get_distribution_strategy(name=None):
    """None/"default" -> the default strategy; "mirrored" -> all local GPUs (or CPUs configured as
    logical devices); "multi_worker" -> MultiWorkerMirroredStrategy (reads TF_CONFIG)."""
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown distribution {name!r}. Valid: default, mirrored, multi_worker")


def compile_model(model, loss="bce_dice", learning_rate=1e-3, optimizer="adam", metrics=None,
                  jit_compile=False, classes=None):
    """Compiles with a fresh optimizer and the segmentation metrics (Dice, mIoU, pixel accuracy)."""
    classes = classes or model.output_shape[-1]
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
                  "adamw": keras.optimizers.AdamW}
    if optimizer not in optimizers:
        raise ValueError(f"Unknown optimizer {optimizer!r}. Valid: {list(optimizers)}")
    if isinstance(loss, str) and classes > 1 and loss == "binary_crossentropy":
        raise ValueError(f"loss 'binary_crossentropy' does not fit a {classes}-class softmax output")
    model.compile(optimizer=optimizers[optimizer](learning_rate),
                  loss=get_loss(loss) if isinstance(loss, str) else loss,
                  metrics=metrics if metrics is not None else segmentation_metrics(classes),
                  jit_compile=jit_compile)
    return model


def _callbacks(run_dir, monitor, mode, patience, tensorboard, extra):
    os.makedirs(run_dir, exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor=monitor,
                                        mode=mode, save_best_only=True),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
    ]
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience,
                                                       restore_best_weights=True))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")))
    return callbacks + list(extra or [])


def fit(model, train_ds, val_ds=None, *, run_dir, epochs, monitor=None, patience=None,
        tensorboard=False, callbacks=None, verbose="auto"):
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
        callbacks: extra callbacks.
        verbose: Keras progress bar setting.

    Returns:
        dict of lists: the history of all epochs of the run so far (read back from history.csv).
    """
    if not model.compiled:
        raise ValueError(f"Model {model.name!r} is not compiled; call tlunet.train.compile_model first.")
    if monitor is None:
        monitor = "val_dice" if val_ds is not None else "loss"
    mode = "min" if "loss" in monitor else "max"
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose, shuffle=False,  # tf.data shuffles
              callbacks=_callbacks(run_dir, monitor, mode, patience, tensorboard, callbacks))
    return read_history(os.path.join(run_dir, "history.csv"))


def read_history(path):
    """history.csv -> {column: [values]}; empty dict if the file does not exist yet."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    number = lambda v: float("nan") if v in ("", "NA", None) else float(v)  # noqa: E731 - CSVLogger writes NA
    return {k: [number(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def run_stages(model, stages, train_ds, val_ds=None, *, run_dir, loss="bce_dice", optimizer="adam",
               jit_compile=False, batchnorm="follow", **fit_kwargs):
    """Trains through a schedule of stages, each with its own strategy, epochs and learning rate —
    e.g. Cheng & Lam's V-Unet: `[{"strategy": "frozen_encoder", "epochs": 10, "learning_rate": 1e-3},
    {"strategy": "all", "epochs": 10, "learning_rate": 1e-5}]`.

    Each stage applies its strategy, compiles with a fresh optimizer and fits in
    `run_dir/stage{i}_{strategy}`. A finished stage leaves its final weights and a `done.json`; a
    restarted run loads the last finished stage's weights and resumes the stage in progress.

    Returns:
        list of per-stage dicts {name, strategy, trainable_params, epochs_run, history}.
    """
    results = []
    for i, stage in enumerate(stages):
        unknown = set(stage) - {"strategy", "epochs", "learning_rate", "name"}
        if unknown:
            raise ValueError(f"Stage {i} has unknown keys {sorted(unknown)}; valid: strategy, epochs, "
                             "learning_rate, name")
        label = stage["strategy"] if isinstance(stage["strategy"], str) else "custom"  # a dict strategy
        name = stage.get("name") or f"stage{i}_{label}".replace(",", "_")
        stage_dir = os.path.join(run_dir, name)
        done = os.path.join(stage_dir, "done.json")
        weights = os.path.join(stage_dir, "final.weights.npz")
        apply_strategy(model, stage["strategy"], batchnorm=batchnorm)
        if os.path.isfile(done):
            with np.load(weights) as saved:
                model.set_weights([saved[f"w{k}"] for k in range(len(saved.files))])
            with open(done) as f:
                results.append(json.load(f))
            continue
        compile_model(model, loss=loss, learning_rate=stage.get("learning_rate", 1e-3),
                      optimizer=optimizer, jit_compile=jit_compile)
        history = fit(model, train_ds, val_ds, run_dir=stage_dir, epochs=stage["epochs"], **fit_kwargs)
        np.savez(weights, **{f"w{k}": w for k, w in enumerate(model.get_weights())})
        result = {"name": name, "strategy": stage["strategy"], "trainable_params": trainable_params(model),
                  "epochs_run": len(next(iter(history.values()), [])), "history": history}
        with open(done, "w") as f:
            json.dump(result, f)
        results.append(result)
    return results
