"""LiteRT and ONNX export (`tlunet.export.export_model`, `tlunet export --format`): every format
matches the Keras model within 1e-4 on random float32 images, for models as training writes them
(trained, saved as .keras, loaded back); int8 quantisation is measured in Dice on a task the tiny
model has learnt; and the console script writes a file that runs."""

import os
import subprocess
import sysconfig
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tlunet
from tlunet.cli import main
from tlunet.export import _interpreter, export_model, load_litert, quantization_report
from tlunet.train import compile_model, fit

SCRIPTS = Path(sysconfig.get_path("scripts"))
TOL = 1e-4
SIZE = 32


def _disks(n, seed):
    """Bright noisy disks on a grey background: images float32 (n, 32, 32, 1), masks uint8 (n, 32, 32)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, masks = np.empty((n, SIZE, SIZE, 1), np.float32), np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(8, SIZE - 8, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(4, 8) ** 2
        images[i, ..., 0] = np.clip(0.25 + 0.5 * disk + rng.normal(0, 0.08, (SIZE, SIZE)), 0, 1)
        masks[i] = disk
    return images, masks


def _dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y[..., None].astype(np.float32))).batch(16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained on the disks with tlunet's compile_model + fit and saved as .keras."""
    tmp = tmp_path_factory.mktemp("trained")
    keras.utils.set_random_seed(0)
    train, val = _disks(96, seed=0), _disks(24, seed=1)
    model = tlunet.build_model("unet", input_shape=(SIZE, SIZE, 1), filters=(4, 8, 16, 32, 64))
    compile_model(model, learning_rate=3e-3)
    fit(model, _dataset(*train), _dataset(*val), run_dir=str(tmp / "run"), epochs=15, verbose=0)
    model.save(tmp / "model.keras")
    return tmp / "model.keras", train, val


@pytest.fixture(scope="module")
def mobilenet_path(tmp_path_factory):
    """mobilenetv2_unet (1 channel: the encoder path with its preprocessing layer), compiled with
    tlunet's loss and metrics and saved as .keras (not trained: its weights do not matter here)."""
    tmp = tmp_path_factory.mktemp("mobilenet")
    keras.utils.set_random_seed(0)
    model = tlunet.build_model("mobilenetv2_unet", input_shape=(SIZE, SIZE, 1), encoder_weights=None)
    compile_model(model)
    model.save(tmp / "model.keras")
    return tmp / "model.keras"


def _run(fmt, path, x):
    if fmt == "litert":
        return load_litert(path)(x)
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        return session.run(None, {"images": x})[0]
    loaded = tf.saved_model.load(str(path))  # kept alive while its function runs
    return loaded.serve_model(tf.constant(x)).numpy()


def _needs(fmt):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")


def _check_parity(model, fmt, tmp_path, seed=0):
    _needs(fmt)
    out = tmp_path / {"litert": "m.tflite", "onnx": "m.onnx", "savedmodel": "m_savedmodel"}[fmt]
    assert export_model(model, out, format=fmt) == str(out)
    x = np.random.default_rng(seed).random((3, *model.input_shape[1:]), dtype=np.float32)
    got, want = _run(fmt, out, x), model(x, training=False).numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < TOL
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-")] == []  # temp file renamed
    return out


@pytest.mark.parametrize("fmt", ["litert", "onnx", "savedmodel"])
def test_trained_unet_matches_keras(trained, fmt, tmp_path):
    _check_parity(keras.models.load_model(trained[0]), fmt, tmp_path)


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_mobilenetv2_unet_matches_keras(mobilenet_path, fmt, tmp_path):
    _check_parity(keras.models.load_model(mobilenet_path), fmt, tmp_path)


def test_3d_unet_to_litert_despite_no_3d_max_pooling(tmp_path):
    """LiteRT has no built-in MaxPool3D; tlunet exports it as strided slices with the same numbers."""
    model = tlunet.build_model("unet3d", input_shape=(16, 16, 16, 1), filters=(4, 8, 16))
    _check_parity(model, "litert", tmp_path)


def test_mixed_precision_model_is_exported_in_float32(tmp_path):
    _needs("onnx")
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        mixed = tlunet.build_model("unet", input_shape=(SIZE, SIZE, 1), filters=(4, 8, 16, 32, 64))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = tlunet.build_model("unet", input_shape=(SIZE, SIZE, 1), filters=(4, 8, 16, 32, 64))
    model.set_weights(mixed.get_weights())
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 1), dtype=np.float32)
    export_model(mixed, tmp_path / "m.onnx", format="onnx")
    assert np.abs(_run("onnx", tmp_path / "m.onnx", x) - model(x).numpy()).max() < TOL


def test_int8_keeps_dice_and_reports_it(trained, tmp_path):
    path, (x_train, _), (x_val, y_val) = trained
    model = keras.models.load_model(path)
    out = export_model(model, tmp_path / "q.tflite", format="litert", quantize="int8",
                       representative_data=lambda: iter(x_train[:32]))
    details = _interpreter(out, 1)
    kinds = {d["dtype"] for d in details.get_tensor_details()}
    assert np.int8 in kinds  # weights and activations are int8 ...
    assert details.get_input_details()[0]["dtype"] == np.float32  # ... behind float32 input and output
    assert details.get_output_details()[0]["dtype"] == np.float32
    report = quantization_report(model, out, x_val, y_val)
    assert report.images == len(x_val)
    assert report.dice_float > 0.9, report  # the tiny model has learnt the disks
    assert abs(report.dice_change) < 0.03 and report.agreement > 0.95, report
    assert 0 < report.max_prob_diff < 0.5  # quantised, so not identical
    assert "change" in str(report)


def test_export_refuses_bad_requests(trained, tmp_path, monkeypatch):
    model = keras.models.load_model(trained[0])
    taken = tmp_path / "taken.tflite"
    taken.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="taken.tflite"):
        export_model(model, taken, format="litert")
    with pytest.raises(ValueError, match=r"\*\.tflite"):
        export_model(model, tmp_path / "m.onnx", format="litert")
    with pytest.raises(ValueError, match="representative_data"):
        export_model(model, tmp_path / "q.tflite", format="litert", quantize="int8")
    with pytest.raises(ValueError, match="divide by 255"):
        export_model(model, tmp_path / "q.tflite", format="litert", quantize="int8",
                     representative_data=np.full((2, SIZE, SIZE, 1), 200.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        export_model(model, tmp_path / "q.tflite", format="litert", quantize="int8",
                     representative_data=np.zeros((2, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match="litert"):
        export_model(model, tmp_path / "m.onnx", format="onnx", quantize="int8")
    free = tlunet.build_model("unet", input_shape=(None, None, 1), filters=(4, 8, 16, 32, 64))
    with pytest.raises(ValueError, match="size="):
        export_model(free, tmp_path / "free.tflite", format="litert")
    inputs = keras.Input((8, 8, 1))
    odd = keras.Model(inputs, keras.layers.Lambda(lambda x: tf.math.igamma(x + 1.0, x + 2.0))(inputs), name="odd")
    with pytest.raises(ValueError, match=r"odd\.tflite: the LiteRT converter cannot convert 'odd'.*Igamma"):
        export_model(odd, tmp_path / "odd.tflite", format="litert")
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "tf2onnx" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"m\.onnx.*tf2onnx.*tlunet\[export\]"):
        export_model(model, tmp_path / "m.onnx", format="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.tflite"]  # nothing written, no temp files


def _write_pairs(root, images, masks):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{i}.png")
    return root


def test_console_script_writes_litert_that_matches_keras(trained, tmp_path):
    path, _, (x_val, y_val) = trained
    val_dir = _write_pairs(tmp_path / "val", x_val[:8], y_val[:8])
    exe = SCRIPTS / "tlunet"
    assert exe.exists(), f"no console script at {exe}: install tlunet first"
    done = subprocess.run([str(exe), "export", str(path), str(tmp_path / "m.tflite"), "--format", "litert",
                           "--validation-data", str(val_dir)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert "LiteRT float32 model written to" in done.stdout and "(N, 32, 32, 1)" in done.stdout
    assert "Dice on 8 images" in done.stdout and "change +0.0000" in done.stdout
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 1), dtype=np.float32)
    want = keras.models.load_model(path)(x).numpy()
    assert np.abs(load_litert(tmp_path / "m.tflite")(x) - want).max() < TOL


def test_cli_int8_with_representative_folder(trained, tmp_path, capsys):
    path, (x_train, y_train), (x_val, y_val) = trained
    rep = _write_pairs(tmp_path / "rep", x_train[:16], y_train[:16])
    val = _write_pairs(tmp_path / "val", x_val, y_val)
    out = tmp_path / "q.tflite"
    assert main(["export", str(path), str(out), "--quantize", "int8"]) == 2
    assert "--representative FOLDER" in capsys.readouterr().err
    assert main(["export", str(path), str(out), "--quantize", "int8", "--representative", str(rep),
                 "--validation-data", str(val)]) == 0  # --format litert from the suffix
    printed = capsys.readouterr().out
    assert "LiteRT int8 model written to" in printed and "Dice on 24 images" in printed
    line = next(line for line in printed.splitlines() if line.startswith("Dice on"))
    dice_float, dice_int8 = (float(line.split(key)[1].split()[0].rstrip(",")) for key in ("Keras float32 ", "LiteRT "))
    assert dice_float > 0.9 and abs(dice_int8 - dice_float) < 0.03
    assert main(["export", str(path), str(out)]) == 2  # exists: refused, not overwritten
    assert "already exists" in capsys.readouterr().err
