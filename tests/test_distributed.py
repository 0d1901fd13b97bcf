"""tf.distribute as users start it: `tlunet train --distribute multi_worker` in two real worker
processes on 127.0.0.1 (TF_CONFIG, free ports), and `--distribute mirrored` over two logical CPUs."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

TLUNET = os.path.join(os.path.dirname(sys.executable), "tlunet")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pairs(root, n=12, size=32):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        image = np.clip(60 + 120 * mask + rng.normal(0, 20, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"case{i:02d}.png")
    return root


def _train_args(data, out, *extra, epochs=3):
    return [TLUNET, "train", "--model", "unet", "--data", str(data), "--image-size", "32,32", "--epochs", str(epochs),
            "--batch-size", "4", "--holdout", "0.25", "--seed", "0", "--deterministic",
            "--set", "model.filters=[4,8,16,32,64]", "--out", str(out), "--name", "mw", *extra]


def _start_workers(data, out, ports, tmp, epochs=3, extra=()):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    tmp.mkdir(exist_ok=True)
    for i in range(len(ports)):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
               "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp)}
        procs.append(subprocess.Popen(_train_args(data, out, "--distribute", "multi_worker", *extra, epochs=epochs),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=300):
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def _digest(text):
    found = re.findall(r"weights sha1 ([0-9a-f]{12})", text)
    assert found, text[-2000:]
    return found[-1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A two-worker job of 6 epochs that nobody interrupts: (its folder, the workers' results)."""
    tmp = tmp_path_factory.mktemp("multi_worker")
    return tmp, _finish(_start_workers(_pairs(tmp / "data"), tmp / "out", _free_ports(2), tmp / "tmp", epochs=6))


@pytest.mark.slow
def test_two_workers_train_to_identical_weights_and_only_the_chief_writes(uninterrupted):
    tmp, results = uninterrupted
    out = tmp / "out"
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]  # no crash leaving the strategy's scope
        assert "Traceback" not in stderr
    chief, other = results
    assert _digest(chief[1] + chief[2]) == _digest(other[1] + other[2])  # mirrored: the same weights
    assert "model saved as" in chief[1] and "model saved as" not in other[1]
    run = out / "mw" / "all"
    assert (run / "done.json").is_file() and (run / "model.keras").is_file()
    assert json.loads((run / "done.json").read_text())["weights_sha1"] == _digest(chief[1] + chief[2])
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6 and history[0].startswith("epoch")  # one writer: one header, 6 epochs
    assert sorted(os.listdir(out)) == ["mw"]  # worker 1 wrote nothing here
    assert not [d for d in os.listdir(tmp / "tmp") if d.startswith("tlunet-worker")]  # and cleaned up its own


@pytest.mark.slow
def test_two_workers_train_any_data_set_size(tmp_path):
    """27 images split 9/9/9 at a global batch of 8: each part ends in a batch of 1, which would hand
    worker 1 no image (in training, validation and the test predictions alike). Training drops it
    (and says so); validation and the test cases are all scored."""
    args = ("--batch-size", "8", "--holdout", "0.3333333")
    data = _pairs(tmp_path / "data", n=27)
    results = _finish(_start_workers(data, tmp_path / "out", _free_ports(2), tmp_path / "tmp", epochs=2, extra=args))
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "9 training images at a global batch of 8 over 2 replicas: each epoch leaves out the last 1" in stderr
    assert _digest(results[0][1] + results[0][2]) == _digest(results[1][1] + results[1][2])
    run = tmp_path / "out" / "mw" / "all"
    config = (run / "config.yaml").read_text()
    assert "n_train: 9" in config and "n_val: 9" in config and "n_test: 9" in config
    done = json.loads((run / "done.json").read_text())
    assert done["epochs"] == 2 and np.isfinite(done["dice"])
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_dice" in history[0]
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 9  # every test case scored


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_through_the_cli(tmp_path):
    data = _pairs(tmp_path / "data")
    code = ("import sys, tensorflow as tf\n"
            "cpu = tf.config.list_physical_devices('CPU')[0]\n"
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
            "from tlunet.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    args = _train_args(data, tmp_path / "out", "--distribute", "mirrored")[1:]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model saved as" in done.stdout
    row = json.loads((tmp_path / "out" / "mw" / "all" / "done.json").read_text())
    assert row["epochs"] == 3 and np.isfinite(row["dice"])


@pytest.mark.slow
def test_a_worker_killed_mid_run_and_the_job_restarted_ends_as_an_uninterrupted_job(tmp_path, uninterrupted):
    """One worker dies (SIGKILL) after a few epochs; the cluster manager restarts the job (the
    survivor blocks in its collectives and is stopped too). Both workers resume from the chief's
    backup at the same epoch, see the batches an uninterrupted job would have (tlunet pipelines draw
    epoch k's order and augmentation from the seed and k alone), and finish with the uninterrupted
    job's weights, bit for bit; history.csv has every epoch once."""

    data = _pairs(tmp_path / "data")
    out = tmp_path / "out"
    state = out / "mw" / "all" / "stage0_all" / "backup" / "state.json"
    procs = _start_workers(data, out, _free_ports(2), tmp_path / "tmp", epochs=6)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["epoch"] >= 2):
            time.sleep(0.5)
        assert state.is_file(), "no epoch finished in time"
        procs[1].kill()  # worker 1 dies
        try:
            procs[0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            procs[0].kill()  # blocked in a collective with a dead peer: the job is restarted
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    done_before = json.loads(state.read_text())["epoch"]
    assert 2 <= done_before < 6
    results = _finish(_start_workers(data, out, _free_ports(2), tmp_path / "tmp", epochs=6))
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert f"epoch {done_before + 1}/6" in stderr and "epoch 1/6," not in stderr  # resumed, not restarted
    assert _digest(results[0][1] + results[0][2]) == _digest(results[1][1] + results[1][2])
    reference = uninterrupted[1][0]
    assert _digest(results[0][1] + results[0][2]) == _digest(reference[1] + reference[2])
    history = (out / "mw" / "all" / "history.csv").read_text().splitlines()
    assert [int(float(line.split(",")[0])) for line in history[1:]] == list(range(6))


SAME_AS_SINGLE = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, tlunet
from tlunet.data import make_dataset
from tlunet.train import compile_model, configure, fit, get_distribution_strategy
rng = np.random.default_rng(0)
x = (rng.random((12, 32, 32, 1)) * 255).astype("uint8")
y = (x[..., 0] > 127).astype("uint8")
weights = {}
for mode in ("single", "mirrored"):
    configure(seed=0, deterministic=True)
    scope = get_distribution_strategy("mirrored").scope() if mode == "mirrored" else tf.distribute.get_strategy().scope()
    with scope:
        model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))
        compile_model(model, learning_rate=1e-2)
        fit(model, make_dataset(x, y, batch_size=4, augment="wang2023"), run_dir=os.path.join(sys.argv[1], mode),
            epochs=2, verbose=0)
    weights[mode] = np.concatenate([np.ravel(w) for w in model.get_weights()])
print("MAXDIFF", float(np.abs(weights["single"] - weights["mirrored"]).max()),
      float(np.abs(weights["single"]).max()))
"""


@pytest.mark.slow
def test_mirrored_training_equals_single_device_training(tmp_path):
    """The global batch is the config's batch, split over the replicas, and the learning rate is
    unchanged: two replicas end where one device does, up to floating-point reduction order (a
    model without BatchNorm: Keras' BatchNorm normalises each replica's share of the batch)."""
    done = subprocess.run([sys.executable, "-c", SAME_AS_SINGLE, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    diff, scale = map(float, re.search(r"MAXDIFF (\S+) (\S+)", done.stdout).groups())
    assert scale > 0.05 and diff < 1e-4, (diff, scale)
