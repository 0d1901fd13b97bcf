"""Which pass over the data a tf.data pipeline is on, so that the order and the augmentation of a
pass depend only on (seed, epoch).

Keras starts a new iterator over a finite training dataset every epoch. tlunet's pipelines begin
with one element per iterator, the pass number taken from the dataset's `EpochClock`; `tlunet.train.fit`
sets the clock to Keras' epoch before each one. A run resumed at epoch k therefore sees exactly the
batches an uninterrupted run would have seen from epoch k on, on every worker of a distributed job.
"""

import tensorflow as tf


class EpochClock:
    """The pass number the next iterator of a dataset takes (then it moves on by one)."""

    def __init__(self):
        self.next = 0

    def take(self):
        epoch, self.next = self.next, self.next + 1
        return epoch


def epoch_numbers(clock, forever=False):
    """A dataset of pass numbers from `clock`: one per iterator, or (forever) one after another."""

    def generate():
        yield clock.take()
        while forever:
            yield clock.take()

    return tf.data.Dataset.from_generator(generate, output_signature=tf.TensorSpec((), tf.int64))


def attach_clock(dataset, clock):
    """`dataset`, sharded by element under tf.distribute (its source is one generator, not files),
    without tf.data's autotuning, and with `clock` as its `epoch_clock` attribute (what
    `tlunet.train.fit` looks for)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: on a 2-core CPU it left over a third of the training epochs at ~60 % of the speed
    # (one core idle) at random; without it every epoch ran at full speed (benchmarks/main_job.py).
    # The pipelines' AUTOTUNE settings then take tf.data's fixed defaults.
    options.autotune.enabled = False
    dataset = dataset.with_options(options)
    dataset.epoch_clock = clock
    return dataset


def pass_key(seed, epoch):
    """The stateless-RNG key of one pass: int64 (2,) from the pipeline's seed and the pass number."""
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(epoch, tf.int64)])
