"""`tlunet.postprocess.PostProcess`: one set of post-processing steps (flip TTA, threshold or argmax,
largest region) that a run's scoring, `tlunet evaluate`, `tlunet predict` and the exported
SavedModel's `serve` all apply, so each gives the same mask for the same image."""

import csv
import os
import subprocess
import sysconfig
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tlunet.postprocess import PostProcess, largest_region
from tlunet.resources import ConfigError
from tlunet.scoring import evaluate_cases

SCRIPTS = Path(sysconfig.get_path("scripts"))
SIZE = 32
# the run's evaluation: flip TTA and the largest region, at a threshold below the 0.5 that a pixel
# with one bright neighbour of two reads under TTA
EVALUATION = {"tta": "flip", "threshold": 0.4, "largest_component": True}


def _shift_model():
    """A "model" whose probability at column j is a steep sigmoid of the grey level at column j + 1:
    not its own mirror, so flip TTA changes its masks (under TTA a pixel with one bright neighbour
    reads 0.5, both 1), and its values stay far from the threshold, so every path must agree exactly."""
    inputs = keras.Input((SIZE, SIZE, 1))
    conv = keras.layers.Conv2D(1, (1, 3), padding="same", activation="sigmoid", name="shift")
    model = keras.Model(inputs, conv(inputs), name="shift")
    conv.set_weights([np.array([0.0, 0.0, 40.0], np.float32).reshape(1, 3, 1, 1), np.array([-20.0], np.float32)])
    return model


def _images():
    """uint8 (N, 32, 32, 1) images: a large and a small bright blob; scattered bright pixels (many
    regions, some of equal size); a blank image."""
    blobs = np.zeros((SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blobs[((yy - 18) / 8.0) ** 2 + ((xx - 11) / 6.0) ** 2 <= 1] = 255
    blobs[3:6, 24:28] = 255
    scattered = np.where(np.random.default_rng(3).random((SIZE, SIZE)) > 0.88, 255, 0).astype(np.uint8)
    return np.stack([blobs, scattered, np.zeros_like(blobs)])[..., None]


def _console(*args, cwd):
    exe = SCRIPTS / "tlunet"
    assert exe.exists(), f"no console script at {exe}: install tlunet first"
    return subprocess.Popen([str(exe), *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def _finish(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def test_scoring_evaluate_predict_and_serve_give_the_same_mask(tmp_path):
    """The run's scoring (`tlunet.scoring.evaluate_cases`), `tlunet evaluate`, `tlunet predict` and the
    SavedModel `tlunet export` writes, run on the same images with the run's evaluation settings
    (flip TTA, the largest region), give the same masks."""
    run = tmp_path / "run"
    run.mkdir()
    model = _shift_model()
    model.save(run / "model.keras")
    (run / "config.yaml").write_text(yaml.safe_dump({"evaluation": EVALUATION}))
    images = _images()
    names = [f"case{i}" for i in range(len(images))]
    post = PostProcess.from_config(EVALUATION)
    rows, scored = evaluate_cases(model, images, np.zeros(images.shape[:3], np.uint8), [{"name": n} for n in names],
                                  post)
    assert [r["case"] for r in rows] == names
    bare = PostProcess(threshold=0.4).predict(model, images.astype(np.float32) / 255.0)[1]
    assert not np.array_equal(scored, bare)  # TTA and the largest region change the masks ...
    from scipy import ndimage
    assert [ndimage.label(m, np.ones((3, 3)))[1] for m in scored] == [1, 1, 0]  # ... to one region each
    assert ndimage.label(bare[1], np.ones((3, 3)))[1] > 5 and scored[1].sum() > 2

    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for name, image, mask in zip(names, images, scored):
        Image.fromarray(image[..., 0]).save(data / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(data / "masks" / f"{name}.png")
    running = [_console("predict", run / "model.keras", data / "images", tmp_path / "pred", cwd=tmp_path),
               _console("evaluate", run / "model.keras", "--data", data, "--csv", tmp_path / "m.csv", cwd=tmp_path),
               _console("export", run / "model.keras", tmp_path / "sm", cwd=tmp_path)]
    predicted, evaluated, exported = (_finish(p) for p in running)

    config = run / "config.yaml"
    for printed in (predicted, evaluated):
        assert f"flip test-time augmentation (from {config})" in printed
        assert f"the largest region only (from {config})" in printed and f"threshold 0.4 (from {config})" in printed
    for name, mask in zip(names, scored):
        written = np.asarray(Image.open(tmp_path / "pred" / "masks" / f"{name}.png")) > 0
        np.testing.assert_array_equal(written, mask.astype(bool), err_msg=f"tlunet predict, {name}")
    with open(tmp_path / "m.csv") as f:  # scored against the masks above: a perfect score is the same mask
        table = {r["case"]: r for r in csv.DictReader(f)}
    assert sorted(table) == names
    assert all(float(table[n]["pixel_accuracy"]) == 1.0 and float(table[n]["dice"]) == 1.0 for n in names), table
    assert "keeps only the largest region of probabilities >= 0.4" in exported
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: its variables live in it
    served = loaded.serve(tf.constant(images)).numpy()[..., 0]
    np.testing.assert_array_equal(served >= 0.4, scored.astype(bool), err_msg="the exported serve")


def test_labels_threshold_one_channel_argmax_several_and_keep_one_region():
    probs = np.zeros((1, 6, 8, 1), np.float32)
    probs[0, 1:4, 1:4] = 0.7
    probs[0, 4, 6] = 0.9
    np.testing.assert_array_equal(PostProcess(threshold=0.5).labels(probs)[0], probs[0, ..., 0] >= 0.5)
    kept = PostProcess(threshold=0.5, largest_component=True).labels(probs)[0]
    assert kept.dtype == np.uint8 and kept.sum() == 9 and kept[4, 6] == 0
    assert PostProcess(threshold=0.8).labels(probs)[0].sum() == 1
    three = np.eye(3, dtype=np.float32)[np.array([[[0, 1], [2, 1]]])]
    np.testing.assert_array_equal(PostProcess().labels(three), [[[0, 1], [2, 1]]])
    with pytest.raises(ValueError, match="one-channel"):
        PostProcess(largest_component=True).labels(three)
    mask = PostProcess(threshold=0.5, largest_component=True).mask_at_size(probs[0, ..., 0], (12, 16))
    assert mask.shape == (12, 16) and mask.dtype == bool
    np.testing.assert_array_equal(mask, largest_region(mask))


def test_settings_are_checked_naming_the_key_and_where_it_came_from():
    assert PostProcess.from_config(None) == PostProcess()
    post = PostProcess.from_config({"tta": "flip", "ensemble": True}, where="run.yaml")
    assert post.to_dict() == {"tta": "flip", "threshold": 0.5, "largest_component": False}
    assert PostProcess.from_config(post.to_dict()) == post
    with pytest.raises(ConfigError, match=r"run.yaml: evaluation.tta must be one of \[None, 'flip'\]"):
        PostProcess.from_config({"tta": "rotate"}, where="run.yaml")
    with pytest.raises(ConfigError, match="evaluation.largest_component must be true or false. Received: 'yes'"):
        PostProcess.from_config({"largest_component": "yes"})
    with pytest.raises(ConfigError, match=r"evaluation.threshold must be a number in \(0, 1\). Received: 1"):
        PostProcess.from_config({"threshold": 1})
    with pytest.raises(ConfigError, match="`evaluation` is not a mapping"):
        PostProcess.from_config(["flip"])
    with pytest.raises(ValueError, match="tta must be None or 'flip'"):
        PostProcess(tta="flips")
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\). Received: True"):
        PostProcess(threshold=True)


def test_flags_win_over_the_run_config_which_wins_over_the_defaults(tmp_path):
    model = tmp_path / "model.keras"
    assert PostProcess.from_flags(model) == (PostProcess(), {})  # no run config beside it
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"evaluation": {"tta": "flip", "largest_component": True}}))
    post, source = PostProcess.from_flags(model, tta="none", threshold=0.3)
    assert post == PostProcess(threshold=0.3, tta=None, largest_component=True)
    assert source == {"tta": "--tta", "threshold": "--threshold", "largest_component": str(config)}
    assert PostProcess.from_run(model) == PostProcess(tta="flip", largest_component=True)
    config.write_text(yaml.safe_dump({"evaluation": {"threshold": "high"}}))
    with pytest.raises(ValueError, match=rf"{config}: evaluation.threshold must be .*; pass --threshold"):
        PostProcess.from_flags(model)
    assert PostProcess.from_flags(model, threshold=0.5, tta="flip", largest_component=False)[0].tta == "flip"
    with pytest.raises(ValueError, match=r"--threshold must be a number in \(0, 1\). Received: 2.0"):
        PostProcess.from_flags(model, threshold=2.0)
    config.write_text("evaluation: [a, list]\n")
    with pytest.raises(ValueError, match="`evaluation` is not a mapping .*; pass --tta, --largest-component"):
        PostProcess.from_flags(model, threshold=0.5)
