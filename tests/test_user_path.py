"""The path a user takes, proven the way they meet it: a model trained by the runner goes through
the `tlunet` console script (export, predict, evaluate) in fresh processes, and the README's main job
runs, in miniature, from a built wheel installed into an empty folder."""

import csv
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf
import yaml

import tlunet
from tlunet.cli import main
from tlunet.export import keep_largest_region
from tlunet.runners import config_from_dict, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sysconfig.get_path("scripts"))
TF_NOISE = ("cuInit", "absl::InitializeLog", "oneDNN", "cuda drivers", "retracing")


def _console(*args, cwd, env=None, timeout=600):
    """Runs the installed `tlunet` console script; returns the completed process."""
    exe = SCRIPTS / "tlunet"
    assert exe.exists(), f"no console script at {exe}: install tlunet first"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A two-stage mobilenetv2_unet run through the runner on the bundled HC18 sample (tiny sizes):
    compiled with tlunet's BCEDiceLoss and metrics, as every run is."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({
        "name": "tiny_hc18",
        "data": {"kind": "hc18", "root": "sample:hc18_small", "limit": 16, "image_size": [32, 64],
                 "split": [0.5, 0.25, 0.25]},
        "model": {"name": "mobilenetv2_unet", "encoder_weights": None},
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"tta": "flip", "largest_component": True},
        "runs": [{"name": "two_stage", "stages": [{"strategy": {"trainable": ["decoder", "head"]}, "epochs": 1},
                                                 {"strategy": "all", "epochs": 1}]}],
    }, str(tmp / "tiny.yaml"))
    run_experiment(cfg, out_dir=str(tmp / "results"), log=lambda *a: None)
    return tmp / "results" / "tiny_hc18" / "two_stage"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model.keras", "stage1_all/best.keras"])
def test_models_the_runner_writes_export_and_serve(trained_run, tmp_path, which):
    """The run's model.keras exports with the run's flip test-time augmentation and largest-region
    step built into `serve` (its config.yaml says evaluation.tta: flip, largest_component: true); a
    stage's best.keras, with no config beside it, bare."""
    model_path = trained_run / which
    assert model_path.is_file()
    done = _console("export", model_path, tmp_path / "sm", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "SavedModel written" in done.stdout
    flip = which == "model.keras"
    assert ("flip test-time augmentation" in done.stdout) == flip
    assert ("keeps only the largest region" in done.stdout) == flip
    assert not any(noise in done.stderr for noise in TF_NOISE), done.stderr
    served = tf.saved_model.load(str(tmp_path / "sm"))
    image = np.asarray(tf.io.decode_png(tf.io.read_file(
        str(Path(tlunet.sample_path("hc18_small")) / "training_set" / "044_HC.png")), channels=1))
    out = served.serve(tf.constant(image[None])).numpy()
    assert out.shape == (1, *image.shape[:2], 1)
    # the endpoint runs the trained weights: same as Keras on the resized image
    import keras
    model = keras.models.load_model(model_path)
    x = tf.image.resize(image[None] / 255.0, model.input_shape[1:3], antialias=True)
    probs = model(x)
    if flip:  # the mean of the image's and its mirror's probabilities, as the run was evaluated
        probs = (probs + tf.reverse(model(tf.reverse(x, [2])), [2])) / 2
    expected = tf.image.resize(probs, image.shape[:2])
    if flip:  # at the scan's size, after the resize (checked against scikit-image in test_export_predict.py)
        expected = keep_largest_region(expected)
    expected = expected.numpy()
    assert np.abs(out - expected).max() < 1e-4
    if flip:  # and it differs from the bare model, which --tta none exports
        bare = tf.image.resize(model(x), image.shape[:2]).numpy()
        assert np.abs(out - bare).max() > 1e-3
        done = _console("export", model_path, tmp_path / "bare", "--tta", "none", "--no-largest-component", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert np.abs(tf.saved_model.load(str(tmp_path / "bare")).serve(tf.constant(image[None])).numpy()
                      - bare).max() < 1e-4


@pytest.mark.slow
def test_predict_and_evaluate_load_a_trained_model_in_a_fresh_process(trained_run, tmp_path):
    sample = Path(tlunet.sample_path("hc18_small"))
    model_path = trained_run / "model.keras"
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("044_HC.png", "082_HC.png"):
        (folder / name).write_bytes((sample / "training_set" / name).read_bytes())
    done = _console("predict", model_path, folder, tmp_path / "pred", "--pixel-size-csv",
                    sample / "training_set_pixel_size_and_HC.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["filename"] for r in rows] == ["044_HC.png", "082_HC.png"]
    with open(sample / "training_set_pixel_size_and_HC.csv") as f:
        sizes = {r["filename"]: float(r["pixel size(mm)"]) for r in csv.DictReader(f)}
    assert [float(r["pixel_size_mm"]) for r in rows] == [sizes["044_HC.png"], sizes["082_HC.png"]]
    done = _console("evaluate", model_path, "--data", sample, "--csv", tmp_path / "m.csv",  # --kind hc18: the run's
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test cases of the run's split" in done.stdout and "adf_mm" in done.stdout and "dice_full" in done.stdout
    config = str(trained_run / "config.yaml")
    assert f"flip test-time augmentation (from {config})" in done.stdout
    assert f"the largest region only (from {config})" in done.stdout
    assert not any(noise in done.stderr for noise in TF_NOISE), done.stderr
    # with the run's own settings, evaluate gives the run's own per-image numbers on its test images
    with open(tmp_path / "m.csv") as f:
        evaluated = {r["case"]: r for r in csv.DictReader(f)}
    with open(trained_run / "metrics.csv") as f:
        own = list(csv.DictReader(f))
    assert own and {r["case"] for r in own} == set(evaluated)  # the run's test cases, no others
    for r in own:
        for k in ("dice", "adf_mm", "dice_full"):
            assert float(evaluated[r["case"]][k]) == pytest.approx(float(r[k]), abs=1e-4), (r["case"], k)
    bare = _console("evaluate", model_path, "--kind", "hc18", "--data", sample, "--tta", "none",
                    "--no-largest-component", "--csv", tmp_path / "bare.csv", cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    assert "test-time" not in bare.stdout and "largest region" not in bare.stdout
    with open(tmp_path / "bare.csv") as f:  # and the flags reached the evaluation
        bare_rows = {r["case"]: r for r in csv.DictReader(f)}
    assert max(abs(float(bare_rows[c]["dice"]) - float(evaluated[c]["dice"])) for c in evaluated) > 1e-4


def test_export_and_predict_flags_for_the_largest_region_from_the_console_script(tmp_path):
    """`tlunet export` takes the largest-region step from the run's config.yaml, a flag overrides it
    either way, and a LiteRT file refuses the flag; `tlunet predict` takes the step from the run's
    config.yaml too, and writes one region per mask. The model's probability is a steep function of the grey level, so an image
    with two bright blobs gives two regions."""
    from scipy import ndimage

    from test_export_predict import _blobs_image, _thresholding_model  # tests/ is on the path (no __init__.py)
    run = tmp_path / "run"
    run.mkdir()
    _thresholding_model((64, 96, 1)).save(run / "model.keras")
    (run / "config.yaml").write_text(yaml.safe_dump({"evaluation": {"tta": None, "largest_component": True,
                                                                    "threshold": 0.5}}))
    image = _blobs_image(135, 200)

    def regions(saved):
        loaded = tf.saved_model.load(str(saved))
        out = loaded.serve(tf.constant(image[None, ..., None])).numpy()[0, ..., 0]
        return ndimage.label(out >= 0.5, np.ones((3, 3)))[1]

    done = _console("export", run / "model.keras", tmp_path / "from_config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "keeps only the largest region of probabilities >= 0.5" in done.stdout and str(run / "config.yaml") in done.stdout
    assert regions(tmp_path / "from_config") == 1
    done = _console("export", run / "model.keras", tmp_path / "every", "--no-largest-component", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "largest region" not in done.stdout and regions(tmp_path / "every") == 2
    (run / "config.yaml").write_text("evaluation: [not, a, mapping]\n")
    done = _console("export", run / "model.keras", tmp_path / "bad", cwd=tmp_path)
    assert done.returncode == 2 and "`evaluation` is not a mapping" in done.stderr and "Traceback" not in done.stderr
    done = _console("export", run / "model.keras", tmp_path / "flags", "--tta", "none", "--largest-component",
                    "--threshold", "0.5", cwd=tmp_path)  # every setting by flag: the odd config is not read
    assert done.returncode == 0, done.stderr
    assert regions(tmp_path / "flags") == 1
    done = _console("export", run / "model.keras", tmp_path / "m.tflite", "--tta", "none", "--largest-component",
                    "--threshold", "0.5", cwd=tmp_path)
    assert done.returncode == 2 and "serve endpoint only" in done.stderr and not (tmp_path / "m.tflite").exists()
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(image).save(scans / "scan.png")
    (run / "config.yaml").write_text(yaml.safe_dump({"evaluation": {"largest_component": True, "threshold": 0.5}}))
    for flag, expected in (([], 1), (["--no-largest-component"], 2)):  # predict, too, works as the run was evaluated
        out = tmp_path / f"pred{len(flag)}"
        done = _console("predict", run / "model.keras", scans, out, *flag, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert ("the largest region only (from " in done.stdout) == (not flag)
        mask = np.asarray(Image.open(out / "masks" / "scan.png")) > 0
        assert ndimage.label(mask, np.ones((3, 3)))[1] == expected


def test_bad_model_file_is_one_line_from_the_console_script(tmp_path):
    (tmp_path / "broken.keras").write_text("not a model")
    done = _console("export", tmp_path / "broken.keras", tmp_path / "sm", cwd=tmp_path)
    assert done.returncode == 2
    assert "broken.keras is not a loadable .keras model" in done.stderr and "Traceback" not in done.stderr


def test_experiment_list_names_the_shipped_experiments(tmp_path):
    done = _console("experiment", "--list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith(("Run ", " "))]
    names = [line.split()[0] for line in lines]
    assert names == sorted(tlunet.list_experiments()) and "wang2023_fetal_head" in names
    assert "profiles: quick, cpu, cpu_ensemble, cpu_final" in done.stdout  # each experiment's profiles
    bare = _console("experiment", cwd=tmp_path)
    assert bare.returncode == 2 and "wang2023_fetal_head" in bare.stdout


def test_cheng_quick_without_ecssd_stops_before_training(tmp_path, capsys):
    assert main(["experiment", "cheng2021_lung_us", "--quick", "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "pretrain.data.root is not set" in err and "ECSSD" in err and "--set pretrain.data.root=" in err
    assert not (tmp_path / "results").exists()  # nothing started


def test_overrides_are_validated_like_the_file(tmp_path, capsys):
    assert main(["experiment", "wang2023_fetal_head", "--quick", "--set", "training.epochz=3",
                 "--out", str(tmp_path)]) == 2
    assert "unknown training keys ['epochz']" in capsys.readouterr().err
    assert main(["experiment", "wang2023_fetal_head", "--quick", "--set", "training", "--out", str(tmp_path)]) == 2
    assert "expected KEY.SUB=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_main_job_in_miniature_from_a_wheel_in_an_empty_folder(tmp_path):
    """`tlunet experiment wang2023_fetal_head --quick`, shrunk to one epoch on 24 images, run by the
    console script of a wheel built from this checkout and installed into a fresh folder."""
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "empty"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    wheel = next(dist.glob("tlunet-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {"PYTHONPATH": str(target)}  # the wheel's tlunet, not the editable checkout
    where = subprocess.run([sys.executable, "-c", "import tlunet; print(tlunet.__file__)"], cwd=work, env={
        **os.environ, **env}, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target)), where
    exe = target / "bin" / "tlunet"
    for argv, shown in ((["--version"], f"tlunet {tlunet.__version__}"), (["models"], "6,665,041"),
                        (["experiment", "--list"], "wang2023_fetal_head")):  # answered from the wheel's catalog
        answer = subprocess.run([str(exe), *argv], cwd=work, env={**os.environ, **env}, capture_output=True,
                                text=True, timeout=60)
        assert shown in answer.stdout, answer.stderr
    done = subprocess.run([str(exe), "experiment", "wang2023_fetal_head", "--quick", "--set", "training.epochs=1",
                           "--set", "data.limit=24", "--set", "data.image_size=[32,64]"], cwd=work,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HC18 bundled sample `hc18_small`" in done.stdout
    exp = work / "results" / "wang2023_fetal_head"
    with open(exp / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    summary = (exp / "summary.md").read_text()
    if len(rows) == 1:  # offline: the seven ImageNet arms are skipped, named, and never run from random weights
        assert rows[0]["run"] == "scratch" and rows[0]["weights"] == "random init"
        assert "Not run: 7 of 8 runs" in summary and "--encoder-weights FILE" in summary
        assert "7 of 8 runs" in done.stdout
    else:  # ImageNet reachable: all eight arms, each from ImageNet except scratch
        assert len(rows) == 8 and {r["weights"] for r in rows[1:]} == {"ImageNet (keras.applications)"}
    saved = yaml.safe_load((exp / "scratch" / "config.yaml").read_text())
    assert saved["n_test"] > 0 and (exp / "scratch" / "model.keras").is_file()
    assert "[1/" in done.stderr and "epoch" in done.stderr  # the progress bar
    assert not any(noise in done.stderr for noise in TF_NOISE), done.stderr[-2000:]
