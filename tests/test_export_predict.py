"""SavedModel export (reloaded with tf.saved_model.load) and folder prediction."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tlunet
from tlunet.export import export_savedmodel
from tlunet.predict import predict_folder


@pytest.fixture(scope="module")
def model():
    return tlunet.build_model("mobilenetv2_unet", input_shape=(64, 96, 1))


def test_savedmodel_matches_keras_model(model, tmp_path):
    path = export_savedmodel(model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(path))
    x = (np.random.default_rng(0).random((2, 64, 96, 1)) * 255).astype(np.uint8)
    keras_out = model.predict(x.astype(np.float32) / 255.0, verbose=0)
    served = loaded.serve(tf.constant(x)).numpy()  # at the model's own size: resizes are identities
    assert np.abs(served - keras_out).max() < 1e-5
    raw = loaded.serve_model(tf.constant(x.astype(np.float32) / 255.0)).numpy()
    assert np.abs(raw - keras_out).max() < 1e-5


def test_savedmodel_serves_any_size_at_input_size(model, tmp_path):
    loaded = tf.saved_model.load(str(export_savedmodel(model, tmp_path / "sm")))
    x = (np.random.default_rng(1).random((1, 123, 77, 1)) * 255).astype(np.uint8)
    out = loaded.serve(tf.constant(x)).numpy()
    assert out.shape == (1, 123, 77, 1)
    expected = tf.image.resize(model(tf.image.resize(x / 255.0, (64, 96), antialias=True)), (123, 77)).numpy()
    assert np.abs(out - expected).max() < 1e-5


def test_export_refuses_existing_dir_and_unsized_model(model, tmp_path):
    (tmp_path / "sm").mkdir()
    with pytest.raises(FileExistsError):
        export_savedmodel(model, tmp_path / "sm")
    free = tlunet.build_model("unet", input_shape=(None, None, 1), filters=(4, 8, 16, 32, 64))
    with pytest.raises(ValueError, match="pass size"):
        export_savedmodel(free, tmp_path / "free")
    assert export_savedmodel(free, tmp_path / "free", size=(32, 32))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # no leftovers


def test_predict_folder_writes_masks_overlays_and_hc(tmp_path):
    from tlunet.data.phantoms import fetal_head
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(fetal_head((100, 150), seed=i)["image"]).save(folder / f"{i}_HC.png")
    Image.fromarray(np.zeros((100, 150), np.uint8)).save(folder / "0_HC_Annotation.png")
    # A "model" that outputs a centred disc, so HC is known: use a fixed-weight plain U-Net head.
    import keras
    inp = keras.Input((64, 96, 1))
    yy, xx = np.mgrid[:64, :96]
    disc = ((yy - 31.5) ** 2 + ((xx - 47.5) * 64 / 96) ** 2 <= 20 ** 2).astype("float32")
    out = keras.layers.Lambda(lambda t: t * 0 + disc[None, ..., None])(inp)
    rows = predict_folder(keras.Model(inp, out), str(folder), str(tmp_path / "out"), pixel_sizes=0.2)
    assert [r["filename"] for r in rows] == ["0_HC.png", "1_HC.png", "2_HC.png"]  # annotation skipped
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "1_HC.png"))
    assert mask.shape == (100, 150) and set(np.unique(mask)) == {0, 255}
    # the disc covers 20/64 of the height: an ellipse with semi-axes 31.25 x 46.9 px at 100x150
    assert abs(rows[1]["hc_mm"] - 0.2 * np.pi * (3 * (31.25 + 46.875) - np.sqrt((3 * 31.25 + 46.875) * (31.25 + 3 * 46.875)))) < 1.5
    with open(tmp_path / "out" / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "out" / "overlays" / "2_HC.png").exists()


def test_flip_tta_is_savedmodel_only_and_named(model, tmp_path):
    from tlunet.export import export_model
    with pytest.raises(ValueError, match="SavedModel's serve endpoint only"):
        export_model(model, tmp_path / "m.tflite", format="litert", tta="flip")
    with pytest.raises(ValueError, match="tta must be None or 'flip'"):
        export_savedmodel(model, tmp_path / "sm", tta="flips")
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "sm").exists()


def _blobs_image(height, width):
    """A black uint8 image with a large bright ellipse and a small bright square far from it."""
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width), np.uint8)
    image[((yy - 0.55 * height) / (0.3 * height)) ** 2 + ((xx - 0.4 * width) / (0.25 * width)) ** 2 <= 1] = 255
    image[4:12, width - 14:width - 4] = 255  # a second, smaller blob far away
    return image


def _thresholding_model(shape):
    """A "model" whose probability is a steep sigmoid of the grey level: bright pixels -> ~1."""
    import keras
    inp = keras.Input(shape)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="threshold",
                              kernel_initializer=keras.initializers.Constant(40.0),
                              bias_initializer=keras.initializers.Constant(-20.0))(inp)
    return keras.Model(inp, out)


def test_keep_largest_region_matches_the_numpy_largest_component():
    """The in-graph labelling keeps scikit-image's 8-connected largest component, ties included (the
    region whose first pixel comes first in reading order), on batches of random masks of many
    shapes, on equal regions, on a long spiral (the worst case for spreading labels) and on an
    empty mask, which is returned unchanged."""
    from scipy import ndimage

    from tlunet.biometry import largest_component
    from tlunet.export import keep_largest_region
    keep = tf.function(keep_largest_region)
    rng = np.random.default_rng(0)
    several = 0
    for _ in range(8):
        h, w = rng.integers(5, 90, 2)
        batch = np.stack([ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 3)) for _ in range(5)])
        batch = ((batch - batch.min()) / np.ptp(batch)).astype(np.float32)
        out = keep(tf.constant(batch[..., None]), 0.5).numpy()[..., 0]
        for p, o in zip(batch, out):
            np.testing.assert_array_equal(o >= 0.5, largest_component(p >= 0.5))
            several += ndimage.label(p >= 0.5, np.ones((3, 3)))[1] > 1
    assert several >= 10  # most maps had several regions to choose from
    ties = np.zeros((2, 12, 12), np.float32)
    ties[0, 1:4, 7:10] = ties[0, 6:9, 1:4] = 0.9  # equal squares: the upper one comes first
    ties[1] = ties[0][:, ::-1]
    out = keep(tf.constant(ties[..., None]), 0.5).numpy()[..., 0]
    for p, o in zip(ties, out):
        np.testing.assert_array_equal(o >= 0.5, largest_component(p >= 0.5))
    assert (out[0] >= 0.5)[2, 8] and (out[1] >= 0.5)[2, 3]
    spiral = np.zeros((61, 61), bool)
    for k in range(0, 30, 4):  # nested square rings, each joined to the next by a one-pixel bridge
        spiral[k, k:61 - k] = spiral[60 - k, k:61 - k] = spiral[k:61 - k, k] = spiral[k:61 - k, 60 - k] = True
        if k + 2 < 30:
            spiral[k + 1, k + 2] = True
    spiral[40:46, 40:46] = False  # cuts a ring into pieces of different lengths
    p = np.where(spiral, 0.9, 0.1).astype(np.float32)
    np.testing.assert_array_equal(keep(tf.constant(p[None, ..., None]), 0.5).numpy()[0, ..., 0] >= 0.5,
                                  largest_component(spiral))
    empty = np.full((1, 8, 8, 1), 0.2, np.float32)
    np.testing.assert_array_equal(keep(tf.constant(empty), 0.5).numpy(), empty)


def test_exported_serve_keeps_the_largest_region_only_when_asked(tmp_path):
    """`largest_component=True`: serve's probabilities are 0 outside the largest region (and the
    pixel around it) and unchanged inside, at any input size; without it both blobs stay."""
    from scipy import ndimage

    from tlunet.export import export_model
    model = _thresholding_model((64, 96, 1))
    image = _blobs_image(135, 200)
    bare = tf.saved_model.load(export_savedmodel(model, tmp_path / "plain"))
    plain = bare.serve(tf.constant(image[None, ..., None])).numpy()[0, ..., 0]
    one = tf.saved_model.load(export_savedmodel(model, tmp_path / "kept", largest_component=True, tta="flip"))
    kept = one.serve(tf.constant(np.stack([image, np.zeros_like(image)])[..., None])).numpy()
    assert ndimage.label(plain >= 0.5, np.ones((3, 3)))[1] == 2  # the bare export finds both blobs
    _, regions = ndimage.label(kept[0, ..., 0] >= 0.5, np.ones((3, 3)))
    assert regions == 1
    head = kept[0, ..., 0] >= 0.5
    assert head[80, 80] and not head[8, 190]  # the ellipse stays, the small square goes
    np.testing.assert_allclose(kept[0, ..., 0][head], plain[head], atol=1e-5)  # the region keeps its probabilities
    # a per-pixel model is its own mirror, so flip changes nothing: exactly the evaluation's region,
    # taken at the scan's own size after the resize
    from tlunet.biometry import largest_component
    np.testing.assert_array_equal(head, largest_component(plain >= 0.5))
    blank = bare.serve(tf.constant(np.zeros_like(image)[None, ..., None])).numpy()[0]
    assert blank.max() > 0 and blank.max() < 0.5
    np.testing.assert_allclose(kept[1], blank, atol=1e-6)  # no region: nothing kept, nothing removed
    with pytest.raises(ValueError, match="SavedModel's serve endpoint only"):
        export_model(model, tmp_path / "m.tflite", format="litert", largest_component=True)
    two = tlunet.build_model("unet", input_shape=(32, 32, 1), classes=3, filters=(4, 8, 16, 32, 64))
    with pytest.raises(ValueError, match="one-channel"):
        export_savedmodel(two, tmp_path / "two", largest_component=True)


def test_predict_folder_largest_component(tmp_path):
    """`tlunet predict --largest-component` keeps one region per mask; without it both blobs are written."""
    from scipy import ndimage
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_blobs_image(135, 200)).save(folder / "scan.png")
    model = _thresholding_model((64, 96, 1))
    for keep, regions in ((False, 2), (True, 1)):
        predict_folder(model, str(folder), str(tmp_path / f"out{keep}"), largest_component=keep)
        mask = np.asarray(Image.open(tmp_path / f"out{keep}" / "masks" / "scan.png")) > 0
        assert ndimage.label(mask, np.ones((3, 3)))[1] == regions


def test_savedmodel_empty_batch_gives_an_empty_result(tmp_path):
    """A batch of no images (a batching server's empty batch) gives float32 (0, H, W, classes) from
    every endpoint rather than a failure inside a convolution; the channel check still applies."""
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), classes=3, filters=(4, 8, 16, 32, 64))
    served = tf.saved_model.load(export_savedmodel(model, tmp_path / "sm", tta="flip"))
    for images, endpoint in ((np.zeros((0, 24, 40, 1), np.uint8), "serve"),
                             (np.zeros((0, 24, 40, 3), np.uint8), "serve"),  # RGB, converted to grey
                             (np.zeros((0, 50, 70, 1), np.float32), "serve"),
                             (np.zeros((0, 24, 40, 1), np.float32), "serve_float")):
        out = getattr(served, endpoint)(images)
        assert out.dtype == tf.float32 and out.shape == (0, *images.shape[1:3], 3), (endpoint, images.shape)
    assert served.serve_model(np.zeros((0, 32, 32, 1), np.float32)).shape == (0, 32, 32, 3)
    out = served.signatures["serving_default"](images=tf.zeros((0, 24, 40, 1), tf.uint8))
    assert out["output_0"].shape == (0, 24, 40, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="images have 4 channels"):
        served.serve(np.zeros((0, 24, 40, 4), np.uint8))
    x = (np.random.default_rng(0).random((2, 32, 32, 1)) * 255).astype(np.uint8)  # a batch: as before
    flip = (model(x / 255.0) + model(x[:, :, ::-1] / 255.0)[:, :, ::-1]) / 2
    np.testing.assert_allclose(served.serve(x).numpy(), flip, atol=1e-5)


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_removes_what_killed_exports_left_and_nothing_else(tmp_path):
    """A killed export cannot clean up: the next export into the same folder removes temporaries whose
    process is gone, and keeps those of live processes, of other machines, and any other file."""
    from tlunet.export import _host_tag, export_model
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host, dead = _host_tag(), _dead_pid()
        leftovers = [f".export-{dead}-{host}-0123456789ab", f".export-{dead}-{host}-ba9876543210.tflite"]
        kept = [f".export-{os.getppid()}-{host}-aaaaaaaaaaaa", f".export-{sleeper.pid}-{host}-bbbbbbbbbbbb.onnx",
                f".export-{dead}-{'0' * 6 if host != '0' * 6 else '1' * 6}-cccccccccccc",  # another machine's
                ".export-dddddddddddd", ".exported-notes", "results"]
        for name in leftovers + kept:
            if "." in name[1:]:
                (tmp_path / name).write_bytes(b"partial")
            else:
                (tmp_path / name).mkdir()
                (tmp_path / name / "saved_model.pb").write_bytes(b"partial")
        export_savedmodel(model, tmp_path / "sm")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["sm"])
        (tmp_path / leftovers[1]).write_bytes(b"partial")  # the file exports clean up too
        export_model(model, tmp_path / "m.tflite", format="litert")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["sm", "m.tflite"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_failing_export_removes_its_temporary(tmp_path, monkeypatch):
    """A SavedModel written whole into its temporary, then the rename into place fails."""
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))

    def fail(src, dst):
        assert os.path.isfile(os.path.join(src, "saved_model.pb"))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export_savedmodel(model, tmp_path / "sm")
    assert list(tmp_path.iterdir()) == []
