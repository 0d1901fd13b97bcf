"""Progress a person can read: one bar per training run (epochs, ETA and the latest metrics), and
bars for long loops such as sliding-window inference. Bars go to stderr, so tables on stdout stay clean."""

import sys
import time

import keras
from tqdm.auto import tqdm

_SHOWN = ("loss", "dice", "val_loss", "val_dice")


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar over a run's epochs that also moves within each epoch, batch by batch:
    `[2/8] decoder:  41%|####  | [01:10<01:45, epoch 13/30, batch 37/120, val_dice=0.910]`.

    On a terminal (stderr a TTY) the bar advances by fractions of an epoch as batches finish
    (redrawn at most every `mininterval` seconds, tqdm's throttle) and its ETA counts the epochs
    trained by this process. Elsewhere (a log file, CI, nohup) it prints one plain line per epoch
    and nothing per batch. One bar spans every stage of a multi-stage run (pass the same callback
    to each `fit`); call `close()` when the run is over. Early stopping leaves the bar short of
    its total.

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
        resumed = getattr(self.model, "_initial_epoch", None) or 0  # set by the run's checkpoint on resume
        if self.bar is None:
            # a terminal gets a live bar; a log file (CI, nohup) gets one plain line per epoch
            self.lines = not self.disable and not sys.stderr.isatty()
            self.started, self.done, self.trained, self.shown, self.metrics = time.time(), 0, 0, 0.0, {}
            # smoothing=0: the ETA is the average rate since `initial`, not the last batches' (a
            # validation pass would swing it); `initial` keeps resumed epochs out of that rate
            self.bar = tqdm(total=self.epochs, desc=self.desc, file=sys.stderr, initial=resumed, smoothing=0,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
                            disable=self.disable or self.lines, dynamic_ncols=True, leave=True)
            self.done = resumed
        elif resumed:
            self.done += resumed
        self._show(self.done, [f"epoch {self.done}/{self.epochs}"])

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None or self.bar.disable:
            return
        now = time.monotonic()
        if now - self.shown < self.bar.mininterval:  # a clock read per batch, a redraw a few times a second
            return
        self.shown = now
        steps = (self.params or {}).get("steps")
        where = [f"epoch {self.done + 1}/{self.epochs}", f"batch {batch + 1}/{steps}" if steps else f"batch {batch + 1}"]
        self._show(self.done + (min((batch + 1) / steps, 1.0) if steps else 0.0), where)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is None:
            return
        self.metrics = {k: f"{float(v):.3f}" for k, v in (logs or {}).items() if k in _SHOWN}
        self.done += 1
        self.trained += 1
        self._show(self.done, [f"epoch {self.done}/{self.epochs}"])
        if self.lines:
            rate = (time.time() - self.started) / self.trained
            eta = tqdm.format_interval(rate * max(self.epochs - self.done, 0))
            print(f"{self.desc}: epoch {self.done}/{self.epochs}, {rate:.1f} s/epoch, ETA {eta}, "
                  + ", ".join(f"{k}={v}" for k, v in self.metrics.items()), file=sys.stderr, flush=True)

    def _show(self, position, where):
        """Redraws the bar at `position` (epochs, fractional within one), labelled with `where`
        and the last epoch's metrics."""
        if self.bar.disable:
            return
        self.bar.n = position
        self.bar.set_postfix_str(", ".join(where + [f"{k}={v}" for k, v in self.metrics.items()]), refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress(iterable=None, desc=None, total=None, disable=False, unit="it"):
    """A tqdm bar on stderr (disable it with `disable=True`)."""
    return tqdm(iterable, desc=desc, total=total, disable=disable, file=sys.stderr, unit=unit,
                dynamic_ncols=True)
