"""A user's reliability report, case by case: predict never overwrites what it did not write nor skips
a user's image, training that diverges stops and says so, valid YAML reads as meant, and mistakes
and Ctrl-C end in one line of tlunet's own words. M is a 1-channel 64x64 mobilenetv2_unet, D an
images/ + masks/ folder of 8 pairs."""

import shutil

import keras
import numpy as np
import pytest
from PIL import Image

import tlunet
from tlunet.cli import main
from tlunet.inference import BadModelOutput
from tlunet.predict import MANIFEST, predict_folder
from tlunet.resources import ConfigError, read_config
from tlunet.runners import config_from_dict, load_config, parse_overrides
from tlunet.train import TrainingDiverged, compile_model, fit


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.keras"
    tlunet.build_model("mobilenetv2_unet", input_shape=(64, 64, 1)).save(path)
    return path


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "d" / "images" / f"c{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[16 + i:40, 20:44] = 255
        Image.fromarray(mask).save(tmp_path / "d" / "masks" / f"c{i}.png")
    return tmp_path / "d"


def _masks(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


# ------------------------------------------------------------------- predict: nothing overwritten
def test_predict_refuses_to_overwrite_the_datas_own_masks(model_file, data, capsys):
    truth = _masks(data / "masks")
    assert main(["predict", str(model_file), str(data / "images"), str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tlunet predict: error: {data}: holds 8 file(s) that predict would overwrite and did "
                          f"not write (or that changed since), e.g. {data / 'masks' / 'c0.png'}; ")
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert _masks(data / "masks") == truth and not (data / "overlays").exists()
    assert main(["predict", str(model_file), str(data / "images"), str(data), "--overwrite"]) == 0
    assert _masks(data / "masks") != truth  # asked for: replaced


def test_predict_reruns_over_its_own_output_but_not_over_a_users_file(model_file, data, capsys):
    out = data.parent / "out"
    assert main(["predict", str(model_file), str(data / "images"), str(out)]) == 0
    assert main(["predict", str(model_file), str(data / "images"), str(out)]) == 0  # its own files: replaced
    corrected = out / "masks" / "c3.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(corrected)  # a mask corrected by hand
    capsys.readouterr()
    assert main(["predict", str(model_file), str(data / "images"), str(out)]) == 2
    assert f"e.g. {corrected};" in capsys.readouterr().err
    corrected.unlink()
    (out / "predictions.csv").write_text("filename,pixel size(mm)\nc0.png,0.1\n")  # the user's CSV, not predict's
    with pytest.raises(FileExistsError, match=rf"e\.g\. {out / 'predictions.csv'};"):
        predict_folder(keras.models.load_model(model_file), str(data / "images"), str(out))
    assert (out / "predictions.csv").read_text() == "filename,pixel size(mm)\nc0.png,0.1\n"


def test_predict_killed_midway_may_run_again_into_its_folder(model_file, data, monkeypatch):
    import tlunet.predict as predict
    calls = []

    def fail_on_third(image, mask):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return image.repeat(3, -1)
    monkeypatch.setattr(predict, "overlay", fail_on_third)
    out = data.parent / "out"
    model = keras.models.load_model(model_file)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(model, str(data / "images"), str(out))
    assert (out / MANIFEST).is_file() and not (out / "predictions.csv").exists()
    monkeypatch.undo()
    assert len(predict_folder(model, str(data / "images"), str(out))) == 8  # its partial output: replaced


# ------------------------------------------------------------ predict: no image skipped silently
def test_predict_segments_every_image_and_skips_only_hc18_annotations(model_file, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("liver_Annotation_review.png", "liver_Annotation.png", "a.png", "000_HC.png",
                 "000_HC_Annotation.png"):
        Image.fromarray(np.full((40, 50), 90, np.uint8)).save(scans / name)
    assert main(["predict", str(model_file), str(scans), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 masks" in out
    assert "skipped 1 HC18 annotation file(s), the outlines of their scans: 000_HC_Annotation.png" in out
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [
        "000_HC.png", "a.png", "liver_Annotation.png", "liver_Annotation_review.png"]


# ------------------------------------------------------------------------ training that diverges
class _BreakWeights(keras.callbacks.Callback):
    """Sets a weight to NaN during epoch `epoch` (0-based), as a learning rate far too high does."""

    def __init__(self, epoch):
        super().__init__()
        self.at = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self.at:
            w = self.model.weights[0]
            w.assign(np.full(w.shape, np.nan, "float32"))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


def _tiny():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
    return compile_model(model, learning_rate=1e-3)


def _batches():
    import tensorflow as tf
    x = np.random.default_rng(0).random((8, 8, 8, 1), np.float32)
    return tf.data.Dataset.from_tensor_slices((x, (x > 0.5).astype("float32"))).batch(4)


@pytest.mark.parametrize("validation", [True, False])
def test_a_loss_that_becomes_nan_ends_training_naming_the_epoch(tmp_path, validation):
    with pytest.raises(TrainingDiverged, match=rf"{tmp_path / 'run'}: training diverged in epoch 2 \((val_)?loss nan"
                                               r".*the model is not saved\. Lower the learning rate \(it was 0\.001\)"
                                               r" and run again; delete the run's folder first"):
        fit(_tiny(), _batches(), _batches() if validation else None, run_dir=str(tmp_path / "run"), epochs=3,
            callbacks=[_BreakWeights(1)], verbose=0, recompute_bn=False)
    state = (tmp_path / "run" / "backup" / "state.json").read_text()
    assert '"epoch": 1' in state  # the last finite epoch is what a resume would start from
    assert not (tmp_path / "run" / "backup" / "epoch0002.weights.h5").exists()


def test_a_run_whose_training_diverges_saves_and_scores_nothing(tmp_path):
    raw = {"name": "tiny", "data": {"kind": "lung_us_phantom", "n": 6, "phantom_size": [32, 32], "image_size": [32, 32],
                                    "split": [0.5, 0.25, 0.25]},
           "model": {"name": "unet", "filters": [4, 8, 16, 32, 64]},
           "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e30}, "runs": [{"name": "all"}]}
    from tlunet.runners import run_experiment
    with pytest.raises(TrainingDiverged, match=r"tiny.all.stage0_all: training diverged in epoch 1 .*no epoch of it "
                                               r"was saved"):
        run_experiment(config_from_dict(raw, str(tmp_path / "c.yaml")), out_dir=str(tmp_path / "out"),
                       log=lambda *a: None)
    run = tmp_path / "out" / "tiny" / "all"
    assert not (run / "model.keras").exists() and not (run / "done.json").exists()
    assert not (run / "stage0_all" / "best.keras").exists()


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_cli_learning_rate_that_is_not_finite_is_refused(data, tmp_path, capsys, value):
    code = main(["train", "--model", "unet", "--data", str(data), "--out", str(tmp_path / "out"),
                 "--set", f"training.learning_rate={value}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.learning_rate must be a finite number > 0. Received: learning_rate=" in err
    assert not (tmp_path / "out").exists()


def test_compile_model_refuses_a_learning_rate_that_is_not_finite():
    with pytest.raises(ValueError, match=r"`learning_rate` must be a finite number > 0. Received: learning_rate=inf"):
        compile_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), learning_rate=float("inf"))


def _broken_model_file(tmp_path, fill):
    model = tlunet.build_model("unet", input_shape=(64, 64, 1), filters=(4, 8, 16, 32, 64))
    last = [l for l in model.layers if l.get_weights()][-1]
    last.set_weights([np.full(w.shape, fill, "float32") for w in last.get_weights()])
    path = tmp_path / "broken.keras"
    model.save(path)
    return path


def test_evaluate_refuses_a_model_that_outputs_nan_naming_the_file(data, tmp_path, capsys):
    path = _broken_model_file(tmp_path, np.nan)
    assert main(["evaluate", str(path), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tlunet evaluate: error: {path}: model ") and "outputs NaN or infinite values" in err
    assert "lower learning rate" in err and len(err.splitlines()) == 1
    assert main(["predict", str(path), str(data / "images"), str(tmp_path / "pred")]) == 2
    assert f"{path}: model " in capsys.readouterr().err and not (tmp_path / "pred").exists()


def test_evaluate_refuses_a_model_whose_outputs_are_not_probabilities(data, tmp_path, capsys):
    inp = keras.Input((64, 64, 1))
    path = tmp_path / "logits.keras"  # a head without its sigmoid: every output 3
    keras.Model(inp, keras.layers.Conv2D(1, 1, kernel_initializer="zeros",
                                         bias_initializer=keras.initializers.Constant(3.0))(inp)).save(path)
    assert main(["evaluate", str(path), "--data", str(data)]) == 2
    assert f"{path}: model " in (err := capsys.readouterr().err) and "outputs values in [3, 3], not probabilities" in err
    with pytest.raises(BadModelOutput, match=r"outputs values in \[3, 3\]"):
        predict_folder(keras.models.load_model(path), str(data / "images"), str(tmp_path / "p"))


# ------------------------------------------------------------------------------- YAML read as meant
def test_floats_pyyaml_reads_as_strings_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: tiny\ndata: {kind: lung_us_phantom, n: 6, image_size: [32, 32], phantom_size: [32, 32]}\n"
                    "model: {name: unet}\ntraining:\n  learning_rate: 1e-4\n  epochs: 1\nruns: [{name: all}]\n")
    assert read_config(path)["training"]["learning_rate"] == 1e-4
    assert load_config(str(path)).training.learning_rate == 1e-4
    overrides = parse_overrides(["training.learning_rate=3E-5", "training.lr_schedule.min_lr=1.0e6", "name=1.2.3"])
    assert overrides == {"training": {"learning_rate": 3e-5, "lr_schedule": {"min_lr": 1e6}}, "name": "1.2.3"}
    cfg = load_config(str(path), overrides=parse_overrides(["training.learning_rate=2e-3"]))
    assert cfg.training.learning_rate == 2e-3


def test_a_repeated_key_names_the_file_key_and_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ntraining:\n  epochs: 5\n  learning_rate: 0.001\n  epochs: 50\n")
    with pytest.raises(ConfigError, match=rf"^{path}: key 'epochs' is given twice in one mapping \(lines 3 and 5\); "
                                          "YAML would keep only the last: remove one$"):
        read_config(path)
    with pytest.raises(ConfigError, match=r"--set 'training=\{a: 1, a: 2\}': the value is not valid YAML \(key 'a' "
                                          r"is given twice in one mapping \(line 1\)"):
        parse_overrides(["training={a: 1, a: 2}"])


def test_a_yaml_anchor_merge_may_override_its_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {epochs: 1, batch_size: 2}\ntraining:\n  <<: *b\n  epochs: 3\n")
    assert read_config(path)["training"] == {"epochs": 3, "batch_size": 2}


def test_a_deeply_nested_yaml_is_a_named_error(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: nested more than 64 levels deep \(at line 1\)"):
        read_config(path)
    assert main(["experiment", str(path)]) == 2
    assert "nested more than 64 levels deep" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"the value is not valid YAML \(nested more than 64 levels"):
        parse_overrides(["training.epochs=" + "[" * 3000 + "]" * 3000])
    with pytest.raises(ConfigError, match=r"the key has 3000 parts"):
        parse_overrides([".".join(["a"] * 3000) + "=1"])


@pytest.mark.slow
def test_a_vgg16_encoder_weights_file_is_checked_at_a_size_vgg16_takes(tmp_path):
    from tlunet.runners.config import encoder_weights
    path = tmp_path / "x.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(path)
    assert encoder_weights(str(path), "vgg16_unet", {}) == (str(path), "encoder file x.weights.h5")
    with pytest.raises(ConfigError, match=r"does not load into the mobilenetv2 encoder"):
        encoder_weights(str(path), "mobilenetv2_unet", {})


# ------------------------------------------------------------------------------ tlunet's own words
def test_evaluate_names_a_3d_model(data, tmp_path, capsys):
    inp = keras.Input((8, 16, 16, 1))
    path = tmp_path / "vol.keras"
    keras.Model(inp, keras.layers.Conv3D(1, 1, activation="sigmoid")(inp)).save(path)
    for argv in (["evaluate", str(path), "--data", str(data)], ["predict", str(path), str(data / "images"),
                                                               str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"{path} is a 3D model (input (None, 8, 16, 16, 1)); tlunet {argv[0]} segments 2D images" in err
        assert "sliding_window_predict" in err and len(err.splitlines()) == 1


def test_evaluate_image_size_on_a_fixed_size_model_names_the_flag(model_file, data, capsys):
    assert main(["evaluate", str(model_file), "--data", str(data), "--image-size", "32,32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tlunet evaluate: error: --image-size 32,32: {model_file} takes 64x64 images only (its input "
                   "size is fixed); drop --image-size")
    assert main(["evaluate", str(model_file), "--data", str(data), "--image-size", "64,64"]) == 0  # its own size


def test_evaluate_image_size_the_model_cannot_take_names_the_flag(data, tmp_path, capsys):
    path = tmp_path / "free.keras"
    tlunet.build_model("unet", input_shape=(None, None, 1), filters=(4, 8, 16, 32, 64)).save(path)
    assert main(["evaluate", str(path), "--data", str(data), "--image-size", "50,50"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tlunet evaluate: error: --image-size 50,50: {path} cannot run on 50x50 images (")
    assert main(["evaluate", str(path), "--data", str(data), "--image-size", "64,64,3"]) == 2
    assert "--image-size 64,64,3: give two sizes > 0, H,W" in capsys.readouterr().err
    assert main(["predict", str(path), str(data / "images"), str(tmp_path / "out")]) == 2
    assert f"{path} accepts any input size; tlunet predict needs a model built at a fixed size" in \
        capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "experiment"])
def test_ctrl_c_during_training_is_one_line_saying_how_to_resume(data, tmp_path, capsys, monkeypatch, command):
    import tlunet.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tlunet.cli, "run_experiment", interrupted)
    argv = (["train", "--model", "unet", "--data", str(data)] if command == "train" else
            ["experiment", "wang2023_fetal_head", "--quick", "--data", str(data)])
    assert main(argv + ["--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"tlunet {command}: interrupted; rerun the same command to resume (finished epochs are kept)"


def test_a_pixel_size_csv_saved_by_excel_reads(tmp_path):
    from tlunet.predict import read_pixel_sizes

    path = tmp_path / "sizes.csv"
    path.write_bytes("\ufefffilename,pixel size(mm)\r\na.png,0.12\r\n".encode("utf-8"))
    assert read_pixel_sizes(str(path)) == {"a.png": 0.12}


def test_neighbours_a_reviewer_found(tmp_path, capsys):
    """A 16-bit colour mask, a twice-given --set key, a 3D model's SavedModel export, a NaN model's
    export and a user's own --csv file: each refused with its own message."""
    import struct
    import zlib

    from tlunet.cli import main
    from tlunet.data.io import DataError, read_mask
    from tlunet.export import export_savedmodel
    from tlunet.runners.config import parse_overrides

    mask = np.zeros((8, 8), np.uint16)
    mask[2:5, 2:5] = 1
    rows = b"".join(b"\x00" + np.stack([mask] * 3, -1)[y].astype(">u2").tobytes() for y in range(8))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0))
                                        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with pytest.raises(DataError, match="a 16-bit RGB mask, which Pillow reads only to its high byte"):
        read_mask(str(tmp_path / "rgb16.png"))
    with pytest.raises(ValueError, match="--set training.epochs is given twice"):
        parse_overrides(["training.epochs=2", "training.epochs=3"])
    volume = tlunet.build_model("unet3d", input_shape=(16, 32, 32, 1), filters=(4, 8))
    with pytest.raises(ValueError, match="the SavedModel export .* is for 2D models"):
        export_savedmodel(volume, str(tmp_path / "sm3"))
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8))
    conv = next(layer for layer in reversed(model.layers) if hasattr(layer, "kernel"))
    conv.kernel.assign(np.full(conv.kernel.shape, np.nan, "float32"))
    model.save(tmp_path / "nan.keras")
    assert main(["export", str(tmp_path / "nan.keras"), str(tmp_path / "sm")]) == 2
    assert "hold NaN or infinite values" in capsys.readouterr().err and not (tmp_path / "sm").exists()
    mine = tmp_path / "mine.csv"
    mine.write_text("my notes\n")
    from tlunet.cli import _check_own_csv
    with pytest.raises(FileExistsError, match="is not a per-case table tlunet evaluate wrote"):
        _check_own_csv(str(mine))
