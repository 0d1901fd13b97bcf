"""Work-arounds for Keras 3's `fit` under tf.distribute.MultiWorkerMirroredStrategy.

Keras 3 (TF backend, up to 3.15 at least) cannot `fit` under MultiWorkerMirroredStrategy:
keras-team/keras#20585 (open), tensorflow/tensorflow#72388. Two places reduce across workers in a
way the collective strategy refuses:

1. `_maybe_symbolic_build` takes the MEAN over workers of the first input batch (a PerReplica) to
   build the metrics symbolically — "Attempt to convert a value (PerReplica ...) to a Tensor".
   Any worker's own batch has the right structure and shapes, so the local one is used.
2. `reduce_per_replica` reduces each (scalar) log value with `axis=0` — "Invalid reduction
   dimension 0 for input with 0 dimensions". Scalars are reduced with `axis=None`.

The first also breaks MirroredStrategy when the first batch splits unevenly over the replicas (a
batch of 3 on 2 devices: "Inputs to operation AddN must have the same size and shape").

3. `predict` hands each replica ceil(batch / replicas) images of a batch in turn, so a last batch
   smaller than that (9 images at batch 8 on 2 replicas: 1 and 0) leaves a replica none, and the
   model fails inside (a convolution's or BatchNorm's shapes). Such a batch is padded with copies
   of the last image, whose outputs are dropped.

`patch_for_distribution(model)` applies (1) and (3) to one model and (2) to the trainer module
(which leaves other strategies untouched: it only changes the multi-worker branch).
"""

import types

import numpy as np
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as _trainer

_original_reduce = _trainer.reduce_per_replica


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
    would leave a replica empty (see the module docstring)."""
    model._maybe_symbolic_build = types.MethodType(_local_symbolic_build, model)
    if not getattr(model.predict, "pads_for_replicas", False):
        model.predict = _predict_every_replica(model.predict)
        model.predict.pads_for_replicas = True
    _trainer.reduce_per_replica = _reduce_per_replica
    return model
