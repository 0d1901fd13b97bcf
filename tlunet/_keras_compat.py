"""Work-arounds for Keras 3's `fit` and `predict` under tf.distribute, on the Keras versions they are for.

Keras 3 (TF backend) cannot `fit` under MultiWorkerMirroredStrategy: keras-team/keras#20585 (open),
tensorflow/tensorflow#72388. Two places reduce across workers in a way the collective strategy
refuses, and `predict` can hand a replica no images. Each work-around below names the Keras
internal it replaces or wraps, the Keras versions it is applied on (`PATCHES`) and why:

1. `symbolic_build` replaces `TensorFlowTrainer._maybe_symbolic_build` (keras/src/backend/tensorflow/
   trainer.py), which takes the MEAN over replicas of the first input batch (a PerReplica) to build
   the metrics symbolically — under MultiWorkerMirroredStrategy "Attempt to convert a value
   (PerReplica ...) to a Tensor", and under MirroredStrategy, when the first batch splits unevenly
   over the replicas (a batch of 3 on 2 devices), "Inputs to operation AddN must have the same size
   and shape". Any replica's own batch has the right structure and shapes, so the first local one
   is used. For Keras >= 3.11, < 3.16: the replacement unpacks the epoch iterator's
   `(begin_step, end_step, iterator)` triples, which Keras yields from 3.11 on (before, pairs).
2. `reduce_per_replica` replaces the trainer module's `reduce_per_replica`, which reduces each
   (scalar) log value over the workers with `axis=0` — "Invalid reduction dimension 0 for input with
   0 dimensions". Scalars are reduced with `axis=None`; only the multi-worker "auto"/"mean" branch
   changes, other strategies and reductions go to the original. For Keras >= 3.11, < 3.16 (the same
   upstream code since at least 3.5, but without (1) a multi-worker `fit` fails all the same).
3. `predict_every_replica` wraps a model's `predict` (`TensorFlowTrainer.predict`), whose
   distributed dataset hands each replica ceil(batch / replicas) images of a batch in turn, so a last
   batch smaller than that (9 images at batch 8 on 2 replicas: 1 and 0) leaves a replica none, and
   the model fails inside (a convolution's or BatchNorm's shapes). Such a batch is padded with copies
   of the last image, whose outputs are dropped. For Keras >= 3.11, < 3.16.

Why these versions: the three patched Keras functions (and `_collective_all_reduce_multi_worker`,
which (2) calls) have the same source in Keras 3.11.0, 3.12.0, 3.13.0, 3.14.1 and 3.15.1 (compared;
in 3.10 `_maybe_symbolic_build` and `predict` still iterate pairs), and tlunet's tests ran on 3.15.1
with TensorFlow 2.21, the newest that setup.py allows (keras<3.16, tensorflow<2.22). `PATCHES`
records a hash of each one's source in 3.15.1, and tests/test_keras_compat.py fails when the
installed Keras' differs: re-check the work-around it names before widening its versions (and the
cap in setup.py).

`patch_for_distribution(model)` applies (1) and (3) to one model and (2) to the trainer module (for
the whole process, but it only changes the multi-worker branch). A work-around is not applied on a
Keras outside its versions, and a warning (`UntestedKerasWarning`) says that tlunet has not been
tested with that Keras for distributed training.
"""

import re
import types
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as _trainer

_original_reduce = _trainer.reduce_per_replica

TESTED_KERAS = "3.15.1"

# Each work-around: the Keras versions it is applied on ([from, below), as major.minor), why, and the
# sha256 of `inspect.getsource` of each Keras function it replaces, wraps or calls, in TESTED_KERAS.
PATCHES = {
    "symbolic_build": {
        "keras": ((3, 11), (3, 16)),
        "why": "_maybe_symbolic_build reduces the first batch (a PerReplica) with MEAN across replicas",
        "sources": {
            "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build":
                "92a504f5eba9b29f81f1bf26180bdd5bf5186b06b7bda426534b90d2d02bc1c2",
        },
    },
    "reduce_per_replica": {
        "keras": ((3, 11), (3, 16)),
        "why": "reduce_per_replica reduces scalar logs over workers with axis=0",
        "sources": {
            "keras.src.backend.tensorflow.trainer.reduce_per_replica":
                "2e7d54b1e6edc29a8c6a7e6b66cd4c8be3ba7842412c93753ac3afe169fa7fb8",
            "keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker":
                "0302369d850e6694978fa7691c0e97b79cd0cf83a6bbef7caed8738e1f1a5c24",
        },
    },
    "predict_every_replica": {
        "keras": ((3, 11), (3, 16)),
        "why": "predict's last batch can leave a replica no images",
        "sources": {
            "keras.src.backend.tensorflow.trainer.TensorFlowTrainer.predict":
                "ee5831d7d2179667008faeb9a0a75b1b8c4a8887174c4f8fea0c94395ee87141",
        },
    },
}


class UntestedKerasWarning(UserWarning):
    """Distributed training with a Keras version tlunet's work-arounds are not for."""


def _version_tuple(version):
    """(major, minor, patch) of a version string ("3.15.1", "3.16.0rc1", "3.15.1.dev0"), or None."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    return tuple(int(p or 0) for p in m.groups()) if m else None


def _spec(name):
    (a, b), (c, d) = PATCHES[name]["keras"]
    return f">={a}.{b},<{c}.{d}"


def applies(name, version=None):
    """Whether work-around `name` (a key of PATCHES) is for Keras `version` (default: the installed one)."""
    v = _version_tuple(keras.__version__ if version is None else version)
    start, below = PATCHES[name]["keras"]
    return v is not None and start <= v < below


def _local_symbolic_build(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x, batch)
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if reduction in ("auto", "mean") and _trainer._collective_all_reduce_multi_worker(strategy):
        def mean(v):
            rank = len(strategy.experimental_local_results(v)[0].shape) if isinstance(
                v, tf.distribute.DistributedValues) else len(getattr(v, "shape", ()))
            return strategy.reduce("MEAN", v, axis=0 if rank else None)
        return tree.map_structure(mean, values)
    return _original_reduce(values, strategy, reduction)


def _predict_every_replica(predict):
    """`predict` (a bound method) that pads an array's last batch where it would leave a replica
    of the model's strategy without images, and returns the outputs of the given images only."""
    from tlunet.data.pipeline import splits_over_replicas

    def run(x, batch_size=None, *args, **kwargs):
        self = predict.__self__
        replicas = self.distribute_strategy.num_replicas_in_sync if self.distribute_strategy else 1
        n = len(x) if isinstance(x, (np.ndarray, tf.Tensor)) and len(x.shape) else 0
        batch = batch_size or 32  # Keras' default
        rest = n % batch
        if replicas == 1 or not rest or splits_over_replicas(rest, replicas):
            return predict(x, batch_size, *args, **kwargs)
        pad = np.repeat(np.asarray(x[-1:]), batch - rest, axis=0)  # a full batch splits, or none does
        out = predict(np.concatenate([np.asarray(x), pad]), batch_size, *args, **kwargs)
        return tree.map_structure(lambda y: y[:n], out)

    return run


def patch_for_distribution(model):
    """Lets `model.fit` run under MultiWorkerMirroredStrategy, and under MirroredStrategy when the
    first batch splits unevenly over the replicas, and `model.predict` on an array whose last batch
    would leave a replica empty (see the module docstring), on the Keras versions each work-around is
    for. On other versions it leaves Keras as it is and warns (UntestedKerasWarning)."""
    skipped = [name for name in PATCHES if not applies(name)]
    if skipped:
        warnings.warn(
            f"tlunet has not been tested with Keras {keras.__version__} for distributed training "
            f"(tested: {TESTED_KERAS}), so its work-arounds for Keras' distributed fit and predict are "
            f"not applied: {', '.join(f'{n} (for keras{_spec(n)})' for n in skipped)}. Under "
            "MultiWorkerMirroredStrategy, or with a batch that splits unevenly over the replicas, Keras' "
            "fit or predict may fail; for distributed training install a Keras in that range.",
            UntestedKerasWarning, stacklevel=2)
    if "symbolic_build" not in skipped:
        model._maybe_symbolic_build = types.MethodType(_local_symbolic_build, model)
    if "predict_every_replica" not in skipped and not getattr(model.predict, "pads_for_replicas", False):
        model.predict = _predict_every_replica(model.predict)
        model.predict.pads_for_replicas = True
    if "reduce_per_replica" not in skipped:
        _trainer.reduce_per_replica = _reduce_per_replica
    return model
