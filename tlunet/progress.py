"""Progress a person can read: one bar per training run (epochs, ETA and the latest metrics), and
bars for long loops such as sliding-window inference. Bars go to stderr, so tables on stdout stay clean."""

import sys
import time

import keras
from tqdm.auto import tqdm

_SHOWN = ("loss", "dice", "val_loss", "val_dice")


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar over a run's epochs: `[2/8] decoder  40%|####  | 12/30 [01:10<01:45, val_dice=0.91]`.

    One bar spans every stage of a multi-stage run (pass the same callback to each `fit`); call
    `close()` when the run is over. Early stopping leaves the bar short of its total.

    Args:
        desc: the bar's label (e.g. "[2/8] decoder").
        epochs: total epochs of the run, over all its stages.
        disable: no bar (e.g. when Keras' own progress bars are on).
    """

    def __init__(self, desc, epochs, disable=False):
        super().__init__()
        self.desc, self.epochs, self.disable = desc, epochs, disable
        self.bar = None
        self.lines = False

    def on_train_begin(self, logs=None):
        if self.bar is None:
            # a terminal gets a live bar; a log file (CI, nohup) gets one plain line per epoch
            self.lines = not self.disable and not sys.stderr.isatty()
            self.started, self.done, self.trained = time.time(), 0, 0
            self.bar = tqdm(total=self.epochs, desc=self.desc, unit="epoch", file=sys.stderr,
                            disable=self.disable or self.lines, dynamic_ncols=True, leave=True)
        resumed = getattr(self.model, "_initial_epoch", None) or 0  # set by the run's checkpoint on resume
        if resumed:
            self.done += resumed
            self.bar.update(resumed)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is None:
            return
        shown = {k: f"{float(v):.3f}" for k, v in (logs or {}).items() if k in _SHOWN}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)
        if self.lines:
            self.done += 1
            self.trained += 1
            rate = (time.time() - self.started) / self.trained
            eta = tqdm.format_interval(rate * max(self.epochs - self.done, 0))
            print(f"{self.desc}: epoch {self.done}/{self.epochs}, {rate:.1f} s/epoch, ETA {eta}, "
                  + ", ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress(iterable=None, desc=None, total=None, disable=False, unit="it"):
    """A tqdm bar on stderr (disable it with `disable=True`)."""
    return tqdm(iterable, desc=desc, total=total, disable=disable, file=sys.stderr, unit=unit,
                dynamic_ncols=True)
