"""Where the main job's time goes: `tlunet experiment wang2023_fetal_head --quick`, run in this
process with a clock on each phase.

    python benchmarks/main_job.py                       # the main job as the README runs it
    python benchmarks/main_job.py --set training.jit_compile=true --out /tmp/xla

It prints, per phase, the wall time and how many of the cores were busy (process CPU seconds over
wall seconds): each epoch's training batches (the first epoch's, which trace the step, apart),
the BatchNorm recompute (`precise_bn`) before each validation and after training, validation, the
checkpoint, loading the data, building the model, test evaluation and figures, and the rest;
then each epoch's training-batch seconds. `--tf-data-autotune` builds tlunet's pipelines
with tf.data's autotuning on, to compare. It also prints the epoch at which validation
Dice first reached `--target` and the wall time to that point, counted from the start of the job.
The results folder is written as the job writes it (`--out`, default a temporary folder).
"""

import argparse
import collections
import contextlib
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EPOCH_BN = "BatchNorm recompute before each validation (precise_bn)"
EPOCH_BN_IN_EVALUATE = "(precise_bn inside evaluate)"
EVALUATE = "(evaluate)"


class PhaseClock:
    """Wall and process-CPU seconds per named phase; `with clock("name"):` adds one interval."""

    def __init__(self):
        self.wall, self.cpu, self.count = collections.Counter(), collections.Counter(), collections.Counter()
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
        self.epochs = []  # each epoch's training-batch seconds

    @contextlib.contextmanager
    def __call__(self, name):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def add(self, name, wall, cpu):
        self.wall[name] += wall
        self.cpu[name] += cpu
        self.count[name] += 1

    def elapsed(self):
        return time.perf_counter() - self.start_wall


def _wrap(owner, attr, clock, name):
    """Replaces `owner.attr` by the same callable timed under `name`."""
    original = getattr(owner, attr)

    def timed(*args, **kwargs):
        with clock(name):
            return original(*args, **kwargs)

    setattr(owner, attr, timed)


def _epoch_timer(clock, curve):
    """A callback timing the training batches of each epoch and recording each epoch's validation
    Dice with the job's elapsed time."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.t = epoch, (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, batch, logs=None):
            self.last = (time.perf_counter(), time.process_time())

        def on_test_begin(self, logs=None):  # the epoch's batches are done
            name = "first epoch: training batches (tracing)" if self.epoch == 0 else "training batches"
            clock.add(name, self.last[0] - self.t[0], self.last[1] - self.t[1])
            clock.epochs.append(self.last[0] - self.t[0])

        def on_epoch_end(self, epoch, logs=None):
            curve.append((epoch + 1, (logs or {}).get("val_dice"), clock.elapsed()))

    return EpochTimer()


def _instrument(clock, curve):
    """Clocks on the phases of a run, in place on tlunet's and Keras' classes."""
    import keras

    from tlunet.training import batchnorm, checkpoint, fitting

    # EpochBatchNorm recomputes from fit's validation (inside evaluate) or, without validation data,
    # at the epoch's end; `inside_evaluate` tells the two apart so validation can be net of it
    state = {"inside_evaluate": False}
    epoch_bn = batchnorm.precise_bn

    def timed_epoch_bn(*args, **kwargs):
        inside = clock(EPOCH_BN_IN_EVALUATE) if state["inside_evaluate"] else contextlib.nullcontext()
        with clock(EPOCH_BN), inside:
            return epoch_bn(*args, **kwargs)

    batchnorm.precise_bn = timed_epoch_bn
    _wrap(fitting, "precise_bn", clock, "BatchNorm recompute after training")
    _wrap(checkpoint.RunCheckpoint, "on_epoch_end", clock, "checkpoint and history, each epoch")
    evaluate = keras.Model.evaluate

    def timed_evaluate(self, *args, **kwargs):
        state["inside_evaluate"] = True
        try:
            with clock(EVALUATE):
                return evaluate(self, *args, **kwargs)
        finally:
            state["inside_evaluate"] = False

    keras.Model.evaluate = timed_evaluate
    fit = keras.Model.fit

    def fit_with_timer(self, *args, callbacks=None, **kwargs):
        # first in the list: its on_test_begin closes the epoch's batches before precise_bn starts
        with clock("inside fit"):
            return fit(self, *args, callbacks=[_epoch_timer(clock, curve)] + list(callbacks or []), **kwargs)

    keras.Model.fit = fit_with_timer


def _instrument_runner(runner, clock):
    """Clocks on the runner's own phases outside training (`Runner` hooks every task has)."""
    phases = {"load": "loading the data", "evaluate_model": "test evaluation and its figures",
              "after_summary": "summary figures"}
    for attr, name in phases.items():
        _wrap(runner, attr, clock, name)
    if hasattr(runner, "build"):
        _wrap(runner, "build", clock, "building the model")


def _autotune_back_on():
    """tlunet's pipelines as they were built before tlunet turned tf.data's autotuning off."""
    import tensorflow as tf

    from tlunet.data import nifti, pipeline

    def attach_clock_autotuned(dataset, clock, attach=pipeline.attach_clock):
        options = tf.data.Options()
        options.autotune.enabled = True
        tuned = attach(dataset, clock).with_options(options)
        tuned.epoch_clock = clock
        return tuned

    pipeline.attach_clock = nifti.attach_clock = attach_clock_autotuned


def _report(clock, curve, target, total):
    inside = clock.wall.pop("inside fit", 0.0)
    for table in (clock.wall, clock.cpu):  # validation net of the precise_bn that ran inside it
        table["validation"] = table.pop(EVALUATE, 0.0) - table.pop(EPOCH_BN_IN_EVALUATE, 0.0)
        table.pop("inside fit", None)
    clock.count["validation"] = clock.count.pop(EVALUATE, 0)
    timed = sum(clock.wall.values())
    print("\n| phase | calls | wall s | share | cores busy |")
    print("|---|---:|---:|---:|---:|")
    rows = list(clock.wall.items())
    rows.append(("the rest: imports, writing tables, Keras between its hooks", total - timed))
    for name, wall in rows:
        cpu = clock.cpu.get(name)
        busy = f"{cpu / wall:.2f}" if cpu is not None and wall > 0 else "—"
        print(f"| {name} | {clock.count.get(name, '—')} | {wall:.1f} | {100 * wall / total:.0f} % | {busy} |")
    busy = (time.process_time() - clock.start_cpu) / total
    print(f"| **the job** | | **{total:.1f}** | 100 % | {busy:.2f} |")
    print(f"\n(inside model.fit: {inside:.1f} s)")
    print("training batches per epoch, s: " + " ".join(f"{w:.1f}" for w in clock.epochs))
    reached = next(((e, s) for e, d, s in curve if d is not None and d >= target), None)
    if reached:
        print(f"validation Dice first reached {target} at epoch {reached[0]}, {reached[1]:.0f} s into the job")
    else:
        best = max((d for _, d, _ in curve if d is not None), default=None)
        print(f"validation Dice never reached {target} (best {best})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="wang2023_fetal_head")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as `tlunet experiment --set`")
    parser.add_argument("--out", help="results folder (default: a temporary one)")
    parser.add_argument("--target", type=float, default=0.93, help="the validation Dice to time")
    parser.add_argument("--tf-data-autotune", action="store_true",
                        help="turn tf.data's autotuning back on in tlunet's pipelines (tlunet's earlier setting)")
    args = parser.parse_args(argv)

    clock = PhaseClock()
    curve = []
    from tlunet.runners import TASKS, load_config, parse_overrides, run_experiment
    _instrument(clock, curve)
    if args.tf_data_autotune:
        _autotune_back_on()
    import tensorflow as tf
    print(f"TensorFlow {tf.__version__}: intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, inter-op "
          f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'}; {os.cpu_count()} CPUs; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cfg = load_config(args.experiment, args.profile, parse_overrides(args.set))
    _instrument_runner(TASKS[cfg.TASK], clock)
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(cfg, args.out or tmp, verbose=0, log=lambda *a: print(*a, file=sys.stderr))
    total = clock.elapsed()
    _report(clock, curve, args.target, total)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
