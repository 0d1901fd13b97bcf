"""SavedModel export (reloaded with tf.saved_model.load) and folder prediction."""

import csv

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
