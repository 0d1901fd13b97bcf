"""What a run and an export hand to someone else: exports and results readable under the umask
(another user's serving container), a model.keras without optimizer state, a SavedModel `serve`
that takes grey or RGB images whatever the model's channels, and a progress bar that moves within
an epoch on a terminal but writes one line per epoch to a log."""

import io
import os
import stat
import sys
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tlunet
import tlunet.progress
from tlunet.data import read_image
from tlunet.export import export_model, export_savedmodel
from tlunet.progress import EpochProgress
from tlunet.files import atomic_write, dump_json as _dump_json
from tlunet.training import compile_model, save_model

FILTERS = (4, 8, 16, 32, 64)


def _unet(channels=1, filters=FILTERS):
    return tlunet.build_model("unet", input_shape=(32, 32, channels), filters=filters)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _modes(path):
    """{relative path: mode} of `path` and everything under it."""
    found = {".": _mode(path)}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            found[os.path.relpath(full, path)] = _mode(full)
    return found


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


# ------------------------------------------------------------------ 1. permissions follow the umask
def test_exports_get_the_permissions_the_umask_gives(umask, tmp_path):
    dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask  # 0o755/0o644, or 0o700/0o600
    model = _unet()
    saved = export_savedmodel(model, tmp_path / "sm")
    modes = _modes(saved)
    assert "saved_model.pb" in modes and "variables" in modes
    for name, mode in modes.items():
        expected = dir_mode if os.path.isdir(os.path.join(saved, name)) else file_mode
        assert mode == expected, f"{name}: {oct(mode)}, not {oct(expected)}"
    for fmt, name in (("litert", "model.tflite"), ("onnx", "model.onnx")):
        assert _mode(export_model(model, tmp_path / name, format=fmt)) == file_mode, fmt
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]


def test_a_runs_results_get_the_permissions_the_umask_gives(umask, tmp_path):
    file_mode = 0o666 & ~umask
    model = compile_model(_unet())
    model.fit(np.zeros((2, 32, 32, 1), "float32"), np.zeros((2, 32, 32, 1), "float32"), epochs=1, verbose=0)
    written = [save_model(model, tmp_path / "model.keras"),
               atomic_write(tmp_path / "done.json", lambda tmp: _dump_json({"dice": 0.9}, tmp)),
               atomic_write(tmp_path / "epoch0001.weights.h5", model.save_weights)]
    # a leftover temporary of a killed write, made under another umask, does not pass its mode on
    leftover = tmp_path / ".summary.partial.json"
    leftover.write_text("{")
    leftover.chmod(0o600 if umask == 0o022 else 0o644)
    written.append(atomic_write(tmp_path / "summary.json", lambda tmp: _dump_json({}, tmp)))
    for path in written:
        assert _mode(path) == file_mode, f"{path}: {oct(_mode(path))}"


# ------------------------------------------------------------------ 2. model.keras without optimizer state
def test_save_model_writes_the_compiled_model_without_optimizer_state(tmp_path):
    model = compile_model(_unet(filters=(8, 16, 32, 64, 128)))
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 1)).astype("float32")
    y = (x > 0.5).astype("float32")
    model.fit(x, y, batch_size=2, epochs=2, verbose=0)  # Adam has taken 4 steps: its slots are built
    optimizer = model.optimizer
    assert int(optimizer.iterations.numpy()) == 4 and len(optimizer.variables) > 2 * len(model.trainable_weights)

    path = save_model(model, tmp_path / "model.keras")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "with_optimizer.keras")
    weight_bytes = sum(w.numpy().nbytes for w in model.weights)
    size = os.path.getsize(path)
    assert size < 1.3 * weight_bytes, (size, weight_bytes)
    assert size < 0.5 * os.path.getsize(tmp_path / "with_optimizer.keras")

    # the in-memory model keeps its real optimizer, and trains on from its state
    assert model.optimizer is optimizer
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == 6

    loaded = keras.models.load_model(path)  # after `import tlunet`: no custom_objects
    assert loaded.compiled and type(loaded.optimizer) is type(optimizer)
    assert loaded.optimizer.get_config()["learning_rate"] == pytest.approx(optimizer.get_config()["learning_rate"])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert set(loaded.evaluate(x, y, verbose=0, return_dict=True)) >= {"loss", "dice"}
    loaded.fit(x, y, batch_size=2, epochs=1, verbose=0)  # fine-tunes from a fresh optimizer
    assert int(loaded.optimizer.iterations.numpy()) == 2


def test_an_untrained_model_saves_as_before(tmp_path):
    """No optimizer state to leave out (an ensemble, a model saved before training): the file is
    Keras' own, and it loads back without a warning."""
    model = _unet()
    model.trainable = False  # as an ensemble is: its optimizer has no slots to load
    compile_model(model)
    path = save_model(model, tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keras.models.load_model(path).compiled


# ------------------------------------------------------------------ 3. serve takes grey or RGB
@pytest.fixture(scope="module")
def grey_served(tmp_path_factory):
    keras.utils.set_random_seed(1)
    path = export_savedmodel(_unet(1), tmp_path_factory.mktemp("grey") / "sm")
    return tf.saved_model.load(str(path))


@pytest.fixture(scope="module")
def rgb_served(tmp_path_factory):
    keras.utils.set_random_seed(2)
    path = export_savedmodel(_unet(3), tmp_path_factory.mktemp("rgb") / "sm")
    return tf.saved_model.load(str(path))


def test_a_grey_model_serves_an_rgb_image_as_tlunet_reads_it_grey(grey_served, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "scan.png")
    grey = read_image(tmp_path / "scan.png", channels=1)  # what `tlunet predict` gives this model
    from_rgb = grey_served.serve(tf.constant(rgb[None])).numpy()
    np.testing.assert_array_equal(from_rgb, grey_served.serve(tf.constant(grey[None])).numpy())
    signature = grey_served.signatures["serving_default"](images=tf.constant(rgb[None]))
    np.testing.assert_array_equal(next(iter(signature.values())).numpy(), from_rgb)
    # float32 RGB in [0, 1]: the same luma weights, unrounded
    x = rgb[None].astype(np.float32) / 255.0
    luma = (x * np.array([19595, 38470, 7471], np.float32)).sum(-1, keepdims=True) / 65536.0
    np.testing.assert_allclose(grey_served.serve_float(tf.constant(x)).numpy(),
                               grey_served.serve_float(tf.constant(luma)).numpy(), atol=1e-6)


def test_an_rgb_model_serves_a_grey_image_as_rgb(rgb_served):
    grey = np.random.default_rng(1).integers(0, 256, (1, 30, 20, 1), dtype=np.uint8)
    tiled = np.repeat(grey, 3, axis=-1)
    np.testing.assert_array_equal(rgb_served.serve(tf.constant(grey)).numpy(), rgb_served.serve(tf.constant(tiled)).numpy())
    f = grey.astype(np.float32) / 255.0
    np.testing.assert_array_equal(rgb_served.serve_float(tf.constant(f)).numpy(),
                                  rgb_served.serve_float(tf.constant(np.repeat(f, 3, axis=-1))).numpy())


def test_the_right_channel_count_is_served_as_before(tmp_path):
    keras.utils.set_random_seed(3)
    model = _unet(1)
    served = tf.saved_model.load(str(export_savedmodel(model, tmp_path / "sm")))
    x = np.random.default_rng(2).integers(0, 256, (2, 45, 37, 1), dtype=np.uint8)

    @tf.function
    def before(images):  # serve's uint8 path as it was, with the model's own channel count only
        original = tf.shape(images)[1:3]
        y = model(tf.image.resize(tf.cast(images, tf.float32) / 255.0, (32, 32), method="bilinear", antialias=True),
                  training=False)
        return tf.image.resize(tf.cast(y, tf.float32), original, method="bilinear")

    np.testing.assert_array_equal(served.serve(tf.constant(x)).numpy(), before(tf.constant(x)).numpy())


@pytest.mark.parametrize("endpoint,dtype", [("serve", np.uint8), ("serve_float", np.float32)])
def test_other_channel_counts_are_refused_naming_what_the_model_takes(grey_served, rgb_served, endpoint, dtype):
    rgba = np.zeros((1, 8, 8, 4), dtype)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serve: images have 4 channels; this model takes 1 \(grey\) or 3 \(RGB, converted to grey\)"):
        getattr(grey_served, endpoint)(tf.constant(rgba))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serve: images have 2 channels; this model takes 3 \(RGB\) or 1 \(grey, repeated to RGB\)"):
        getattr(rgb_served, endpoint)(tf.constant(np.zeros((1, 8, 8, 2), dtype)))


# ------------------------------------------------------------------ 4. progress within an epoch
class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    """`time` for tlunet.progress whose monotonic clock moves a second per reading, so every batch
    is past the redraw throttle."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        self.now += 1.0
        return self.now

    def time(self):
        return time.time()


def _train_with_bar(monkeypatch, stderr, epochs=2, steps=5):
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(tlunet.progress, "time", _Clock())
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    bar = EpochProgress("[1/1] demo", epochs)
    model.fit(np.zeros((4 * steps, 4), "float32"), np.zeros((4 * steps, 1), "float32"), batch_size=4,
              epochs=epochs, verbose=0, callbacks=[bar])
    bar.close()
    return stderr.getvalue()


def test_on_a_terminal_the_bar_moves_batch_by_batch(monkeypatch):
    out = _train_with_bar(monkeypatch, _Terminal())
    frames = out.replace("\n", "\r").split("\r")
    first_epoch = [f for f in frames if "epoch 1/2, batch" in f]
    assert [f"batch {b}/5" in f for b, f in zip(range(1, 6), first_epoch)] == [True] * 5
    assert any("epoch 2/2, batch 3/5" in f for f in frames)
    # the bar itself moves within the epoch: 1 of 5 batches of epoch 1 of 2 is 10%
    assert any(" 10%|" in f for f in first_epoch) and any(" 30%|" in f for f in first_epoch)
    assert "<" in first_epoch[-1].split("[")[-1]  # an ETA: [elapsed<remaining, ...]


def test_in_a_log_file_one_line_per_epoch_and_nothing_per_batch(monkeypatch):
    out = _train_with_bar(monkeypatch, io.StringIO())
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[1/1] demo: epoch 1/2,") and lines[1].startswith("[1/1] demo: epoch 2/2,")
    assert "batch" not in out and "\r" not in out
