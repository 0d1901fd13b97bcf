"""Any data-set size trains and evaluates under tf.distribute: no replica is handed an empty batch.

tf.distribute splits a global batch of b over R replicas ceil(b / R) to each in turn (9 images at
batch 4 on 2 replicas end with a batch of 1: 1 and 0), and a replica given no images fails inside
the model. The batching rules are checked here with the replica count patched (fast); the real
strategies in subprocesses (two logical CPUs) and in tests/test_distributed.py (two workers)."""

import itertools
import logging
import subprocess
import sys

import numpy as np
import pytest

from tlunet.data import make_classification_dataset, make_dataset
from tlunet.data import pipeline


def _split(batch, replicas):
    """What tf.distribute hands each replica of one batch (seen on MirroredStrategy and
    MultiWorkerMirroredStrategy: 6 over 4 -> 2, 2, 2, 0)."""
    per, out = -(-batch // replicas), []
    for _ in range(replicas):
        out.append(min(per, batch))
        batch -= out[-1]
    return out


@pytest.fixture
def replicas(monkeypatch):
    def use(count):
        monkeypatch.setattr(pipeline, "replicas_in_sync", lambda: count)
    return use


def _sizes(ds):
    return [int(x.shape[0]) for x, _ in ds]


def _arrays(n):
    images = (np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8))
    return images, np.zeros((n, 4, 4), np.uint8)


def test_every_batch_of_kept_data_reaches_every_replica(replicas):
    for count, batch, n in itertools.product([2, 3, 4, 8], [2, 4, 5, 8, 16], range(1, 50)):
        replicas(count)
        try:
            _, sizes = pipeline.distributed_batching(n, batch, training=False)
        except ValueError as e:  # only where tf.distribute cannot spread the batch or the images at all
            assert not pipeline.splits_over_replicas(batch, count) or n < count or "cannot be cut" in str(e)
            continue
        sizes = sizes or [batch] * (n // batch) + [n % batch] * bool(n % batch)
        assert sum(sizes) == n and max(sizes) <= 2 * batch, (count, batch, n, sizes)
        assert all(min(_split(b, count)) > 0 for b in sizes), (count, batch, n, sizes)


def test_training_drops_the_partial_batch_and_says_so(replicas, caplog):
    replicas(2)
    images, masks = _arrays(13)
    with caplog.at_level(logging.WARNING, logger="tlunet.data.pipeline"):
        ds = make_dataset(images, masks, batch_size=4, augment="wang2023")
    assert _sizes(ds) == [4, 4, 4] and ds.element_spec[0].shape[0] == 4
    assert "13 training images at a global batch of 4 over 2 replicas: each epoch leaves out the last 1" in caplog.text
    seen = [sorted(int(v) for v in x[:, 0, 0, 0].numpy() * 255 + 0.5) for x, _ in make_dataset(images, masks, 4)]
    assert len(set(sum(seen, []))) == 12  # one pass: 12 different images, the shuffle's last one left out
    labels = make_classification_dataset(list(images), np.arange(13), (4, 4), batch_size=4)
    assert _sizes(labels) == [4, 4, 4]


def test_validation_keeps_every_image_in_order(replicas):
    replicas(2)
    images, masks = _arrays(9)
    ds = make_dataset(images, masks, batch_size=4, shuffle=False)  # 4, 4, 1 would hand a replica none
    assert _sizes(ds) == [4, 3, 2] and ds.cardinality() == 3
    order = np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in ds]) * 255
    np.testing.assert_allclose(order, np.arange(9), atol=1e-3)
    assert _sizes(make_dataset(*_arrays(10), batch_size=4, shuffle=False)) == [4, 4, 2]  # 2 splits: as before
    replicas(4)
    assert _sizes(make_dataset(*_arrays(41), batch_size=8, shuffle=False)) == [8, 8, 7, 7, 7, 4]


def test_outside_a_strategy_nothing_changes(replicas):
    replicas(1)
    images, masks = _arrays(13)
    assert _sizes(make_dataset(images, masks, batch_size=4)) == [4, 4, 4, 1]
    assert _sizes(make_dataset(images, masks, batch_size=4, drop_remainder=True)) == [4, 4, 4]
    assert _sizes(make_dataset(images, masks, batch_size=4, shuffle=False)) == [4, 4, 4, 1]


@pytest.mark.parametrize("count, n, batch, kwargs, message", [
    (4, 20, 6, {}, r"batch_size 6 is the global batch, split over 4 replicas .* use a multiple of 4"),
    (2, 20, 1, {"shuffle": False}, r"batch_size 1 .* leaves a replica without images"),
    (2, 3, 4, {}, r"3 training images, fewer than one global batch of 4: .* use batch_size <= 3"),
    (3, 4, 3, {"shuffle": False}, r"4 images cannot be cut into batches that give each of the 3 replicas one"),
], ids=["batch-6-on-4", "batch-1-on-2", "fewer-than-a-batch", "4-images-on-3"])
def test_sizes_no_batching_can_spread_are_named(replicas, count, n, batch, kwargs, message):
    replicas(count)
    with pytest.raises(ValueError, match=message):
        make_dataset(*_arrays(n), batch_size=batch, **kwargs)


MIRRORED = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, tlunet
from tlunet.data import make_dataset
from tlunet.evaluation import dice
from tlunet.train import compile_model, configure, fit, get_distribution_strategy
rng = np.random.default_rng(0)
x = (rng.random((22, 32, 32, 1)) * 255).astype("uint8")
y = (x[..., 0] > 127).astype("uint8")
configure(seed=0)
# 13 training and 9 validation images at batch 4; a model without BatchNorm, whose replicas agree (Keras
# keeps each replica's own BatchNorm moving statistics, so replicas of such a model predict differently)
with get_distribution_strategy("mirrored").scope():
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))
    compile_model(model, learning_rate=1e-2)
    val = make_dataset(x[13:], y[13:], batch_size=4, shuffle=False)
    history = fit(model, make_dataset(x[:13], y[:13], batch_size=4, augment="wang2023"), val,
                  run_dir=sys.argv[1], epochs=2, verbose=0, recompute_bn=False)
    scores = model.evaluate(val, return_dict=True, verbose=0)
probs = model.predict(x[13:] / 255.0, batch_size=8, verbose=0)  # 8 + 1: a replica would get none
direct = model(x[13:] / 255.0, training=False).numpy()
per_image = [dice(p[..., 0] >= 0.5, t) for p, t in zip(probs, y[13:])]
print("RESULT", len(history["val_dice"]), probs.shape[0], float(np.abs(probs - direct).max()),
      scores["dice"], float(np.mean(per_image)))
"""


@pytest.mark.slow
def test_mirrored_uneven_sizes_train_validate_and_predict_every_image(tmp_path):
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "13 training images at a global batch of 4 over 2 replicas" in done.stderr
    epochs, predicted, diff, val_dice, numpy_dice = done.stdout.split("RESULT")[1].split()
    assert int(epochs) == 2 and int(predicted) == 9 and float(diff) < 1e-5
    assert abs(float(val_dice) - float(numpy_dice)) < 1e-5  # validation scored all 9 images, each once
