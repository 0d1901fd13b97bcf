"""Export of a classifier (`task: classification`, `seg_to_classifier`): `tlunet export` of a run's
model.keras gives a SavedModel whose `serve` returns (N, K) class probabilities and whose
`class_names()` returns the run's class names."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tlunet.cli import main
from tlunet.export import export_model, export_savedmodel, is_classifier, load_litert
from tlunet.models import build_unet, seg_to_classifier
from tlunet.runners import load_config
from tlunet.runners.results import write_config
from tlunet.training import save_model

SCRIPTS = Path(sysconfig.get_path("scripts"))
SIZE = 32
CLASSES = ["covid", "pneumonia", "regular"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

# Run in a fresh process, as a deployment would: the SavedModel alone, no tlunet model code.
SERVE_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
frame = np.load(sys.argv[2])
print(json.dumps({
    "uint8": loaded.serve(tf.constant(frame[None])).numpy().tolist(),
    "float32": loaded.serve(tf.constant(frame[None].astype(np.float32) / 255)).numpy().tolist(),
    "empty_uint8": loaded.serve(tf.zeros((0, 45, 61, 3), tf.uint8)).shape.as_list(),
    "empty_float32": loaded.serve_float(tf.zeros((0, 20, 30, 1))).shape.as_list(),
    "class_names": [n.decode() for n in loaded.class_names().numpy()],
}))
"""


def _classifier():
    source = build_unet((SIZE, SIZE, 1), 4, filters=(4, 8))
    model = seg_to_classifier(source, len(CLASSES), inputs="both", hidden=8, dropout=0.0, weights="random")
    # Sharper logits than random weights give (probabilities near 1/3 whatever the image), so a
    # different resize or grey conversion moves the probabilities well beyond the tests' tolerance.
    logits = model.get_layer("classifier_logits")
    logits.kernel.assign(logits.kernel * 6.0)
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder with model.keras and the config.yaml a classification run writes, the model)."""
    folder = tmp_path_factory.mktemp("exp") / "dense-pretrained"
    folder.mkdir()
    model = _classifier()
    save_model(model, str(folder / "model.keras"))
    cfg = load_config("gare2022_reverse_transfer")  # what `ClassificationRunner.train_and_evaluate` writes
    write_config(str(folder), cfg, run=cfg.runs[0], run_seed=0)
    return folder, model


def _console(*args, cwd):
    exe = SCRIPTS / "tlunet"
    assert exe.exists(), f"no console script at {exe}: install tlunet first"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


def _as_served(model, images):
    """The model's probabilities on float32 images (N, h, w, 1) in [0, 1] resized as `serve` resizes them."""
    resized = tf.image.resize(images, (SIZE, SIZE), method="bilinear", antialias=True)
    return model.predict(resized, verbose=0)


def test_console_export_of_a_classification_run_serves_its_class_probabilities(run, tmp_path):
    folder, model = run
    assert yaml.safe_load((folder / "config.yaml").read_text())["classes"] == CLASSES
    done = _console("export", folder / "model.keras", tmp_path / "sm", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert "(N, 3), columns covid, pneumonia, regular" in printed and str(folder / "config.yaml") in printed
    assert "resized to 32x32" in printed and "largest region" not in printed and "test-time" not in printed

    frame = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)  # an odd-sized RGB frame
    np.save(tmp_path / "frame.npy", frame)
    served = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, str(tmp_path / "sm"), str(tmp_path / "frame.npy")],
                            capture_output=True, text=True, timeout=300, env=ENV)
    assert served.returncode == 0, served.stderr
    out = json.loads(served.stdout.strip().splitlines()[-1])

    assert out["class_names"] == CLASSES
    probs = np.array(out["uint8"])
    assert probs.shape == (1, 3) and np.allclose(probs.sum(-1), 1, atol=1e-4)
    # grey as `tlunet predict` reads an RGB file
    grey = np.asarray(Image.fromarray(frame).convert("L"), np.float32)[None, ..., None] / 255
    np.testing.assert_allclose(probs, _as_served(model, grey), atol=1e-4)  # a plain resize is ~3e-3 off
    # float32 RGB: the same luma weights, unrounded
    grey_float = (frame.astype(np.float32) / 255 @ np.array([19595, 38470, 7471], np.float32) / 65536)[None, ..., None]
    np.testing.assert_allclose(np.array(out["float32"]), _as_served(model, np.minimum(grey_float, 1)), atol=1e-4)
    assert out["empty_uint8"] == [0, 3] and out["empty_float32"] == [0, 3]


def test_bare_classifier_exports_numbered_classes_and_says_so(run, tmp_path, capsys):
    _, model = run
    save_model(model, str(tmp_path / "bare.keras"))  # no config.yaml beside it
    assert main(["export", str(tmp_path / "bare.keras"), str(tmp_path / "sm")]) == 0
    printed = capsys.readouterr().out
    assert "columns 0, 1, 2 (numbered: no config.yaml beside the model)" in printed
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    assert loaded.class_names().numpy().tolist() == [b"0", b"1", b"2"]
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.serve_model(tf.constant(x)).numpy(), model.predict(x, verbose=0), atol=1e-5)


def test_class_count_mismatch_is_refused_naming_the_config(run, tmp_path, capsys):
    _, model = run
    save_model(model, str(tmp_path / "model.keras"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": "classification", "classes": ["covid", "regular"]}))
    assert main(["export", str(tmp_path / "model.keras"), str(tmp_path / "sm")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "config.yaml") in err and "2 classes" in err and "outputs 3 class probabilities" in err
    assert not (tmp_path / "sm").exists()


def test_segmentation_options_are_refused_for_a_classifier(run, tmp_path, capsys):
    folder, model = run
    assert is_classifier(model)
    with pytest.raises(ValueError, match="tta post-processes a segmentation model's probability maps"):
        export_savedmodel(model, tmp_path / "a", tta="flip")
    with pytest.raises(ValueError, match="leave largest_component at False"):
        export_model(model, tmp_path / "b", largest_component=True)
    with pytest.raises(ValueError, match="class_names has 2 names"):
        export_savedmodel(model, tmp_path / "c", class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names are stored in a SavedModel only"):
        export_model(model, tmp_path / "m.tflite", format="litert", class_names=CLASSES)
    with pytest.raises(ValueError, match="class_names name a classifier's outputs"):
        export_savedmodel(build_unet((SIZE, SIZE, 1), 2, filters=(4, 8)), tmp_path / "d", class_names=["a", "b"])
    for flags in (["--tta", "flip"], ["--largest-component"], ["--threshold", "0.3"]):
        assert main(["export", str(folder / "model.keras"), str(tmp_path / "sm"), *flags]) == 2
        assert f"{flags[0]}" in capsys.readouterr().err
    assert not any(p.name in ("a", "b", "c", "d", "sm") for p in tmp_path.iterdir())


def test_savedmodel_api_defaults_and_names(run, tmp_path):
    _, model = run
    path = export_model(model, tmp_path / "sm", class_names=CLASSES)  # format="savedmodel"
    loaded = tf.saved_model.load(str(path))
    assert loaded.class_names().numpy().tolist() == [c.encode() for c in CLASSES]
    x = np.random.default_rng(2).random((3, 50, 40, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), _as_served(model, x), atol=1e-5)
    assert loaded.signatures["class_names"]()["output_0"].numpy().tolist() == [c.encode() for c in CLASSES]


def test_console_litert_export_of_a_classifier_describes_its_output(run, tmp_path, capsys):
    folder, model = run
    assert main(["export", str(folder / "model.keras"), str(tmp_path / "m.tflite")]) == 0
    printed = capsys.readouterr().out
    assert "(N, 32, 32, 1)" in printed and "output: float32 class probabilities (N, 3), columns covid, pneumonia, " \
                                          "regular" in printed
    x = np.random.default_rng(3).random((2, SIZE, SIZE, 1), dtype=np.float32)
    np.testing.assert_allclose(load_litert(tmp_path / "m.tflite")(x), model.predict(x, verbose=0), atol=1e-4)
    assert main(["export", str(folder / "model.keras"), str(tmp_path / "q.tflite"), "--validation-data",
                 str(tmp_path)]) == 2
    assert "--validation-data is for segmentation models" in capsys.readouterr().err
