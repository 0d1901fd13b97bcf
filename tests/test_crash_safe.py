"""Crash-safe runs: a training killed at any point — during compute or in the middle of any of the
files an epoch writes — resumes on the next start and finishes with a loadable model and a history
with every epoch exactly once; a full disk and a corrupt backup give errors that name the file."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import tlunet
import tlunet.files as files_module
from tlunet.data import make_dataset
from tlunet.train import compile_model, fit, read_history

EPOCHS, STEPS = 3, 2  # 8 images, batch 4


class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, so no `except Exception` cleanup runs on the way out."""


def _data():
    rng = np.random.default_rng(0)
    x = (rng.random((8, 32, 32, 1)) * 255).astype("uint8")
    ds = make_dataset(x, (x[..., 0] > 127).astype("uint8"), batch_size=4, augment=None, shuffle=False)
    return ds


def _model():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64)),
                         learning_rate=1e-2)


def _fit(run_dir, ds, callbacks=(), patience=None):
    model = _model()
    fit(model, ds, ds, run_dir=str(run_dir), epochs=EPOCHS, patience=patience, callbacks=list(callbacks), verbose=0)
    return model


def _check_finished(run_dir, model):
    history = read_history(run_dir / "history.csv")
    assert history["epoch"] == list(range(EPOCHS))  # every epoch once: none lost, none repeated
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * STEPS  # resumed with its optimizer state
    best = keras.models.load_model(run_dir / "best.keras")
    assert best.count_params() == model.count_params()
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert not [f for f in os.listdir(run_dir) if ".partial" in f]  # no temporary file left looking like output


class KillInCompute(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations.numpy() == STEPS + 1:  # epoch 2, first batch
            raise Killed


def _kill_at_write(monkeypatch, n, how):
    """Kills the n-th atomic write of the run: `partial` half-writes its temporary file, `before`
    stops with the temporary file complete but not renamed, `after` right after the rename."""
    calls = {"n": 0}
    replace, fsync = os.replace, files_module.fsync_path

    def fake_fsync(path):
        if os.path.isfile(path) and ".partial" in path:
            calls["n"] += 1
            if calls["n"] == n and how == "partial":
                with open(path, "r+b") as f:
                    f.truncate(max(1, os.path.getsize(path) // 2))
                raise Killed
        return fsync(path)

    def fake_replace(src, dst):
        if ".partial" in str(src) and calls["n"] == n and how == "before":
            raise Killed
        replace(src, dst)
        if ".partial" in str(src) and calls["n"] == n and how == "after":
            raise Killed

    monkeypatch.setattr(files_module, "fsync_path", fake_fsync)
    monkeypatch.setattr(files_module.os, "replace", fake_replace)


# A run writes history.csv when it starts (write 1); then each epoch writes, in order, best.keras
# (when it improves, 2), the epoch's weights (3), state.json (4) and history.csv (5). One kill inside
# each kind of file, and between each pair of renames:
KILL_POINTS = [(2, "partial"), (3, "partial"), (3, "after"), (4, "before"), (5, "before")]


@pytest.mark.slow
@pytest.mark.parametrize("n,how", KILL_POINTS, ids=[f"write{n}-{how}" for n, how in KILL_POINTS])
def test_a_run_killed_while_writing_resumes_and_finishes(tmp_path, monkeypatch, n, how):
    ds = _data()
    with monkeypatch.context() as m:
        _kill_at_write(m, n, how)
        with pytest.raises(Killed):
            _fit(tmp_path, ds)
    model = _fit(tmp_path, ds)  # the same command again
    _check_finished(tmp_path, model)


@pytest.mark.slow
def test_a_run_killed_during_compute_resumes_at_its_last_epoch(tmp_path):
    ds = _data()
    with pytest.raises(Killed):
        _fit(tmp_path, ds, [KillInCompute()])
    assert read_history(tmp_path / "history.csv")["epoch"] == [0]
    model = _fit(tmp_path, ds)
    _check_finished(tmp_path, model)


def test_a_corrupt_latest_backup_falls_back_to_the_one_before_with_a_warning(tmp_path):
    ds = _data()
    with pytest.raises(Killed):
        class Stop(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2:
                    raise Killed
        _fit(tmp_path, ds, [Stop()])
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    latest = tmp_path / "backup" / state["weights"]
    latest.write_bytes(latest.read_bytes()[:200])  # a disk that lost the file's tail
    with pytest.warns(UserWarning, match=rf"{state['weights']} cannot be read .*resuming from the epoch before it"):
        model = _fit(tmp_path, ds)
    assert read_history(tmp_path / "history.csv")["epoch"] == [0, 1, 2]  # epoch 1 trained again, once


def test_an_unreadable_backup_with_no_fallback_names_the_file(tmp_path):
    ds = _data()
    backup = tmp_path / "backup"
    backup.mkdir(parents=True)
    (backup / "state.json").write_text("{not json")
    with pytest.raises(OSError, match="state.json: unreadable resume state .*delete .*backup"):
        _fit(tmp_path, ds)


def test_a_full_disk_is_a_named_error_and_leaves_the_previous_state(tmp_path, monkeypatch):
    ds = _data()

    class FillDisk(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                monkeypatch.setattr(files_module, "free_bytes", lambda folder: 1000)

    with pytest.raises(OSError, match=r"not enough free disk space to write .*MiB free") as info:
        _fit(tmp_path, ds, [FillDisk()])
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["epoch"] == 1
    model = _fit(tmp_path, ds)  # space freed: the run resumes
    _check_finished(tmp_path, model)


def test_a_writer_failing_with_enospc_names_the_file_and_leaves_no_partial(tmp_path, monkeypatch):
    def fail(path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"history.csv: could not be written \(No space left on device\)"):
        files_module.atomic_write(str(tmp_path / "history.csv"), fail)
    assert os.listdir(tmp_path) == []


def test_best_checkpoint_survives_a_resume(tmp_path):
    """The best epoch before a crash still counts after it: a resumed run does not overwrite
    best.keras with a worse epoch just because it is the first one it saw."""
    ds = _data()

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise Killed
    with pytest.raises(Killed):
        _fit(tmp_path, ds, [Stop()])
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    before = (tmp_path / "best.keras").stat().st_mtime_ns
    state["best"] = 2.0  # no later epoch can beat a Dice of 2
    (tmp_path / "backup" / "state.json").write_text(json.dumps(state))
    _fit(tmp_path, ds)
    assert (tmp_path / "best.keras").stat().st_mtime_ns == before


KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tlunet, tlunet.train as t
    from tlunet.data import make_dataset
    from tlunet.train import compile_model, fit

    run_dir, kill = sys.argv[1], sys.argv[2] == "kill"
    rng = np.random.default_rng(0)
    x = (rng.random((8, 32, 32, 1)) * 255).astype("uint8")
    ds = make_dataset(x, (x[..., 0] > 127).astype("uint8"), batch_size=4, shuffle=False)
    model = compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64)))
    if kill:  # SIGKILL in the middle of writing epoch 2's weights file
        save = model.save_weights
        def save_and_die(path):
            save(path)
            if "epoch0002" in path:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)
                os.kill(os.getpid(), signal.SIGKILL)
        model.save_weights = save_and_die
    fit(model, ds, ds, run_dir=run_dir, epochs=3, verbose=0)
    model.save(os.path.join(run_dir, "model.keras"))
''')


@pytest.mark.slow
def test_sigkill_during_a_weights_save_then_rerun(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(script), str(run_dir), "kill"], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [f for f in os.listdir(run_dir / "backup") if ".partial" in f]  # the half-written file is there
    rerun = subprocess.run([sys.executable, str(script), str(run_dir), "run"], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not [f for f in os.listdir(run_dir / "backup") if ".partial" in f]  # cleared on the rerun
    assert read_history(run_dir / "history.csv")["epoch"] == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert keras.models.load_model(run_dir / "model.keras").count_params() > 0


def test_a_stage_after_a_resumed_stage_trains_all_its_epochs(tmp_path):
    """Keras keeps `_initial_epoch` on the model: a stage resumed at epoch 2 must not make the next
    stage start at epoch 2 too."""
    from tlunet.train import run_stages
    ds = _data()
    stages = [{"strategy": "all", "epochs": 3, "learning_rate": 1e-3}, {"strategy": "all", "epochs": 3, "learning_rate": 1e-4}]

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise Killed
    with pytest.raises(Killed):
        run_stages(_model(), stages, ds, ds, run_dir=str(tmp_path), verbose=0, callbacks=[Stop()])
    done = run_stages(_model(), stages, ds, ds, run_dir=str(tmp_path), verbose=0)
    assert [d["epochs_run"] for d in done] == [3, 3]
    assert read_history(tmp_path / "stage1_all" / "history.csv")["epoch"] == [0, 1, 2]
