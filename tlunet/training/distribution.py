"""tf.distribute: the strategy of a run and this process's role in it."""

import hashlib

import numpy as np
import tensorflow as tf

DISTRIBUTE = (None, "mirrored", "multi_worker")

# Process-wide on purpose: TensorFlow configures its collectives once per process, so a second
# MirroredStrategy or MultiWorkerMirroredStrategy cannot be created; every run shares the first.
_STRATEGIES = {}


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
