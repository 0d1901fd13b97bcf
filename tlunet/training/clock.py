"""The epoch clock of tlunet's datasets: which pass over the data a training epoch takes."""

import keras


def epoch_clock(dataset, depth=64):
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


class DataEpoch(keras.callbacks.Callback):
    """Sets a tlunet dataset's `EpochClock` to `offset` + Keras' epoch before each epoch's pass."""

    def __init__(self, clock, offset=0):
        super().__init__()
        self.clock, self.offset = clock, offset

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.next = self.offset + epoch
