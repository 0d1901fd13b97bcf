"""PreciseBN: BatchNorm moving statistics recomputed as the average batch statistics of the weights."""

import warnings
import weakref

import keras
import tensorflow as tf

from tlunet.selection import iter_layers
from tlunet.training.clock import epoch_clock

# model -> (its BatchNorm layers, their traced forward pass): `precise_bn` runs every epoch, and an
# eager forward pass costs several times a traced one. Weak keys: a model that is gone takes its trace.
_FORWARDS = weakref.WeakKeyDictionary()


def _statistics_forward(model, layers):
    """A traced `model(x, training=True)` returning each of `layers`' (moving mean, moving variance)
    after the call; traced with the layers' momentum at 0, as `precise_bn` sets it."""
    key = [id(l) for l in layers]
    cached = _FORWARDS.get(model)
    if cached is None or cached[0] != key:
        ref = weakref.ref(model)  # the cache's value must not hold its key alive

        @tf.function(reduce_retracing=True, autograph=False)
        def forward(x):
            ref()(x, training=True)
            return [(l.moving_mean.value, l.moving_variance.value) for l in layers]
        cached = _FORWARDS[model] = (key, forward)
    return cached[1]


def _first_batches(dataset, max_batches):
    """An iterable of the first `max_batches` batches of a tf.data dataset or a PyDataset."""
    if hasattr(dataset, "take"):
        return dataset.take(max_batches)
    return (dataset[i] for i in range(min(len(dataset), max_batches)))


def _summed_statistics(model, layers, dataset, max_batches):
    """Runs the first `max_batches` batches of `dataset` through `model` in training mode.

    Returns:
        ([[sum of batch means, sum of batch variances] per layer, each batch weighted by its size],
        images seen, batches seen).
    """
    sums = [[0.0, 0.0] for _ in layers]
    batches = seen = 0
    batches_of = _first_batches(dataset, max_batches)
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
    return sums, seen, batches


def precise_bn(model, dataset, max_batches=200):
    """Sets the moving mean and variance of every trainable BatchNormalization layer of `model` to the
    average of its batch statistics over `dataset`, each batch weighted by its size (PreciseBN: Wu &
    Johnson, "Rethinking 'Batch' in BatchNorm", 2021). Weights are not changed; layers that do not
    train (frozen BatchNorm, which keeps its source's statistics) are left as they are. Inference
    uses the moving averages, which after a short training (Keras' momentum 0.99) still hold some of
    their initial 0/1 and much of the early epochs' statistics; these match the final weights.

    Args:
        model: a Keras model, after training.
        dataset: a tf.data dataset or PyDataset of inputs (or (inputs, targets) pairs) drawn like the training data:
            shuffled (batches of one subject's neighbouring files would understate the variance),
            without augmentation, at the training batch size.
        max_batches: at most this many batches are used (the first ones: shuffle first).
            A tlunet pipeline gives its first pass every time (its `EpochClock` is set to 0), so
            each call, and each stage of `run_stages`, a resumed run's too, sees the same batches.

    Returns:
        (layers updated, batches used). On an error or an interrupt the model keeps the statistics
        it had.
    """
    layers = [l for _, l in iter_layers(model) if isinstance(l, keras.layers.BatchNormalization) and l.trainable]
    if not layers:
        return 0, 0
    momenta = [l.momentum for l in layers]
    before = [(keras.ops.convert_to_numpy(l.moving_mean), keras.ops.convert_to_numpy(l.moving_variance))
              for l in layers]
    clock = epoch_clock(dataset)
    if clock is not None:
        clock.next = 0
    try:
        for l in layers:
            l.momentum = 0.0  # a training-mode call then leaves that batch's statistics in the moving averages
        sums, seen, batches = _summed_statistics(model, layers, dataset, max_batches)
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


def _rereadable(dataset):
    """Whether `precise_bn` can read `dataset` again after `fit` has: a tf.data dataset or a PyDataset."""
    return hasattr(dataset, "take") or isinstance(dataset, keras.utils.PyDataset)


def batchnorm_data(recompute_bn, data):
    """`data` when `fit` can recompute BatchNorm statistics from it; else None, with a warning if
    `recompute_bn` asked for it. Call it from `fit` itself: the warning names `fit`'s caller."""
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


class EpochBatchNorm(keras.callbacks.Callback):
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
