"""`run_stages`: training through a schedule of stages, each with its own strategy and learning rate."""

import json
import os
import shutil

import numpy as np

from tlunet.files import atomic_write, dump_json
from tlunet.finetune import apply_strategy, trainable_params
from tlunet.training.batchnorm import precise_bn
from tlunet.training.compile import compile_model
from tlunet.training.fitting import fit

STAGE_KEYS = ("strategy", "epochs", "learning_rate", "name", "lr_schedule")


def run_stages(model, stages, train_ds, val_ds=None, *, run_dir, loss="bce_dice", optimizer="adam",
               jit_compile=False, batchnorm="follow", lr_schedule=None, gradient_accumulation=1, bn_data=None,
               backup_dir=None, **fit_kwargs):
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

    With `backup_dir` (a non-chief worker's: the chief's run folder), a stage in progress resumes
    from the backup of the same stage folder under `backup_dir` (see `fit`).

    Returns:
        list of per-stage dicts {name, strategy, trainable_params, epochs_run, history}.
    """
    results = []
    passes = 0  # each stage takes its own passes over the data (from its configured epochs)
    for i, stage in enumerate(stages):
        data_epoch, passes = passes, passes + int(stage.get("epochs", 0))
        name = _stage_name(i, stage, run_dir)
        stage_dir = os.path.join(run_dir, name)
        apply_strategy(model, stage["strategy"], batchnorm=batchnorm)
        if os.path.isfile(os.path.join(stage_dir, "done.json")):
            results.append(_load_finished(model, stage_dir, bn_data))
            continue
        compile_model(model, loss=loss, learning_rate=stage.get("learning_rate", 1e-3),
                      optimizer=optimizer, jit_compile=jit_compile, gradient_accumulation=gradient_accumulation)
        # with bn_data, fit recomputes this stage's trainable BatchNorm layers each epoch and at its end
        history = fit(model, train_ds, val_ds, run_dir=stage_dir, epochs=stage["epochs"],
                      recompute_bn=bn_data is not None, bn_data=bn_data,
                      lr_schedule=stage.get("lr_schedule", lr_schedule), data_epoch=data_epoch,
                      backup_dir=None if backup_dir is None else os.path.join(backup_dir, name), **fit_kwargs)
        result = {"name": name, "strategy": stage["strategy"], "trainable_params": trainable_params(model),
                  "epochs_run": len(next(iter(history.values()), [])), "history": history,
                  **({"precise_bn": True} if bn_data is not None else {})}
        results.append(_save_finished(model, stage_dir, result))
    return results


def _stage_name(i, stage, run_dir):
    """The folder name of stage `i` (its `name`, or `stage{i}_{strategy}`); ValueError for unknown
    keys or a name that is not a plain folder name."""
    unknown = set(stage) - set(STAGE_KEYS)
    if unknown:
        raise ValueError(f"Stage {i} has unknown keys {sorted(unknown)}; valid: strategy, epochs, "
                         "learning_rate, lr_schedule, name")
    label = stage["strategy"] if isinstance(stage["strategy"], str) else "custom"  # a dict strategy
    name = stage.get("name") or f"stage{i}_{label}".replace(",", "_")
    if os.path.basename(str(name)) != str(name) or str(name) in (".", "..") or os.path.isabs(str(name)):
        raise ValueError(f"Stage {i} name {name!r} must be a plain folder name (it is a folder of {run_dir})")
    return name


def _load_finished(model, stage_dir, bn_data):
    """Loads a finished stage's final weights into `model`; returns its `done.json`. With `bn_data`,
    recomputes the BatchNorm statistics when that file does not say they were."""
    with np.load(os.path.join(stage_dir, "final.weights.npz")) as saved:
        model.set_weights([saved[f"w{k}"] for k in range(len(saved.files))])
    with open(os.path.join(stage_dir, "done.json")) as f:
        result = json.load(f)
    if bn_data is not None and not result.get("precise_bn"):  # a stage finished without recomputing them
        precise_bn(model, bn_data)
    return result


def _save_finished(model, stage_dir, result):
    """Writes a finished stage's final weights, then its `done.json` (`result`, returned), and
    removes its resume backup."""
    values = model.get_weights()
    atomic_write(os.path.join(stage_dir, "final.weights.npz"),
                 lambda tmp: np.savez(tmp, **{f"w{k}": w for k, w in enumerate(values)}),
                 needed=sum(w.nbytes for w in values))
    atomic_write(os.path.join(stage_dir, "done.json"), lambda tmp: dump_json(result, tmp))
    shutil.rmtree(os.path.join(stage_dir, "backup"), ignore_errors=True)  # the stage's final weights are kept
    return result

