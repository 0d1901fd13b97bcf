"""Epoch-wise learning-rate schedules: their options, the rate of an epoch, and the Keras callback."""

import math

import keras

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
        if key not in ("name", "monitor"):
            _check_option(spec["name"], key, value)
    return out


def _check_option(name, key, value):
    """Raises ValueError unless `value` suits option `key` of schedule `name`."""
    whole = key in ("warmup_epochs", "patience")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf or \
            (whole and not isinstance(value, int)) or (key == "factor" and not 0 < value < 1):
        what = 'a whole number >= 0' if whole else 'in (0, 1)' if key == 'factor' else 'a finite number >= 0'
        raise ValueError(f"lr_schedule {name!r}: {key} must be {what}. Received: {key}={value!r}")


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
