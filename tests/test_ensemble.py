"""Ensembles: one model averaging trained models' probabilities, made from finished runs by the
`tlunet ensemble` console script, loaded after `import tlunet`, and exported with the members'
evaluation settings."""

import csv
import os
import subprocess
import sysconfig
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import tlunet
from tlunet.ensemble import ensemble_model, write_ensemble
from tlunet.export import keep_largest_region
from tlunet.runners import config_from_dict, run_experiment

SCRIPTS = Path(sysconfig.get_path("scripts"))


def _console(*args, cwd):
    exe = SCRIPTS / "tlunet"
    assert exe.exists(), f"no console script at {exe}: install tlunet first"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def _tiny(shape, seed):
    keras.utils.set_random_seed(seed)
    return tlunet.build_model("unet", input_shape=shape, filters=[4, 8])


def test_same_size_members_average_exactly():
    a, b, c = _tiny((32, 48, 1), 0), _tiny((32, 48, 1), 1), _tiny((32, 48, 1), 2)
    x = np.random.default_rng(0).random((2, 32, 48, 1)).astype("float32")
    expected = (a(x).numpy() + b(x).numpy() + c(x).numpy()) / 3
    model = ensemble_model([a, b, c])
    assert model.input_shape == (None, 32, 48, 1) and not model.trainable_weights
    assert [layer.name for layer in model.layers if isinstance(layer, keras.Model)] == ["member0", "member1", "member2"]
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-6)


def test_a_smaller_member_sees_the_image_at_its_own_size():
    """The ensemble takes the larger input; the smaller member gets it shrunk (antialiased, as
    `tlunet export` shrinks a scan) and its probabilities are resized back."""
    big, small = _tiny((64, 96, 1), 0), _tiny((32, 48, 1), 1)
    x = np.random.default_rng(1).random((1, 64, 96, 1)).astype("float32")
    shrunk = tf.image.resize(x, (32, 48), method="bilinear", antialias=True)
    back = tf.image.resize(small(shrunk), (64, 96), method="bilinear").numpy()
    model = ensemble_model([small, big])
    assert model.input_shape == (None, 64, 96, 1)
    np.testing.assert_allclose(model(x).numpy(), (back + big(x).numpy()) / 2, atol=1e-5)


def test_bad_members_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="two or more"):
        ensemble_model([_tiny((32, 48, 1), 0)])
    with pytest.raises(ValueError, match="different channel counts"):
        ensemble_model([_tiny((32, 48, 1), 0), _tiny((32, 48, 3), 0)])
    classifier = keras.Sequential([keras.Input((32, 48, 1)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="averages segmentation maps"):
        ensemble_model([_tiny((32, 48, 1), 0), classifier])
    with pytest.raises(ValueError, match="fixed input size"):
        ensemble_model([_tiny((32, 48, 1), 0), tlunet.build_model("unet", input_shape=(None, None, 1), filters=[4, 8])])


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two runs of one split (seeds 0 and 1) through the runner, on the bundled HC18 sample, and the
    runner's ensemble of the two (`evaluation.ensemble`)."""
    tmp = tmp_path_factory.mktemp("seeds")
    cfg = _seeds_config(tmp, ensemble=True)
    run_experiment(cfg, out_dir=str(tmp / "results"), log=lambda *a: None)
    return [tmp / "results" / "tiny_hc18" / f"scratch-seed{s}" for s in (0, 1)]


def _seeds_config(tmp, ensemble, seeds=(0, 1), folds=None, epochs=2):
    return config_from_dict({
        "name": "tiny_hc18",
        "data": {"kind": "hc18", "root": "sample:hc18_small", "limit": 16, "image_size": [32, 64],
                 "split": [0.5, 0.25, 0.25]},
        "model": {"name": "unet", "filters": [4, 8, 16]},
        "training": {"epochs": epochs, "batch_size": 4},
        "sweep": {"seeds": list(seeds), "folds": folds},
        "evaluation": {"tta": "flip", "largest_component": True, "ensemble": ensemble},
        "runs": [{"name": "scratch"}],
    }, str(tmp / "tiny.yaml"))


@pytest.mark.slow
def test_the_runner_tests_the_seeds_ensemble_as_a_run(two_seeds):
    exp = two_seeds[0].parent
    run = exp / "scratch-ensemble"
    assert {"model.keras", "config.yaml", "metrics.csv", "done.json"} <= set(os.listdir(run))
    assert (run / "figures" / "worst_cases.png").is_file()  # HC18: the worst cases at full size
    model = keras.models.load_model(run / "model.keras")
    seeds = [keras.models.load_model(r / "model.keras") for r in two_seeds]
    x = np.random.default_rng(3).random((2, 32, 64, 1)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), (seeds[0](x).numpy() + seeds[1](x).numpy()) / 2, atol=1e-5)
    with open(run / "config.yaml") as f:
        cfg = yaml.safe_load(f)
    assert [m["seed"] for m in cfg["ensemble"]] == [0, 1] and cfg["evaluation"]["tta"] == "flip"
    with open(exp / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"scratch", "scratch (ensemble)"}
    with open(run / "metrics.csv") as f:  # the row is the ensemble's own test cases, not the seeds' mean
        cases = list(csv.DictReader(f))
    assert float(rows["scratch (ensemble)"]["dice"]) == pytest.approx(np.mean([float(c["dice"]) for c in cases]))
    assert int(rows["scratch (ensemble)"]["n_test"]) == len(cases)
    assert rows["scratch (ensemble)"]["dice_sd"] == "nan" and float(rows["scratch"]["dice_sd"]) >= 0  # one model: no ±
    assert "(ensemble)" in (exp / "summary.md").read_text().split("| scratch |")[1]  # its own row, after the seeds'
    # without the key, the finished seed runs are reused, not retrained (and the ensemble row goes)
    logged = []
    run_experiment(_seeds_config(exp.parent.parent, ensemble=False), out_dir=str(exp.parent), log=logged.append)
    assert sum("done earlier, skipped" in line for line in logged) == 2
    with open(exp / "summary.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["scratch"]


@pytest.mark.slow
def test_the_runner_remakes_an_ensemble_whose_members_changed_and_names_a_missing_one(tmp_path):
    """Folds: each fold's ensemble averages that fold's seeds. Seeds [0, 1] then [0, 2]: the
    ensemble is made again from the new members, not reused; a member whose model.keras is gone is
    named."""
    def config(seeds):
        return _seeds_config(tmp_path, ensemble=True, seeds=seeds, folds=2, epochs=1)

    out = tmp_path / "results"
    run_experiment(config((0, 1)), out_dir=str(out), log=lambda *a: None)
    exp = out / "tiny_hc18"

    def members(fold):
        with open(exp / f"scratch-fold{fold}-ensemble" / "config.yaml") as f:
            return yaml.safe_load(f)["ensemble"]
    assert [m["run"] for m in members(1)] == ["scratch-fold1-seed0", "scratch-fold1-seed1"]
    with open(exp / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    ensemble, seeds = rows["scratch (ensemble)"], rows["scratch"]
    assert int(ensemble["folds"]) == 2 and int(ensemble["n_test"]) == int(seeds["n_test"])
    assert int(ensemble["trainable_params"]) == 2 * int(seeds["trainable_params"])  # two members' weights
    logged = []
    run_experiment(config((0, 2)), out_dir=str(out), log=logged.append)
    assert [m["run"] for m in members(0)] == ["scratch-fold0-seed0", "scratch-fold0-seed2"]
    assert sum("members changed since it was made" in line for line in logged) == 2
    os.remove(exp / "scratch-fold0-seed2" / "model.keras")
    with pytest.raises(tlunet.resources.ConfigError, match=r"scratch-fold0-seed2/model\.keras is missing"):
        run_experiment(config((0, 2)), out_dir=str(out), log=lambda *a: None)


def test_an_ensemble_needs_two_seeds(tmp_path):
    with pytest.raises(tlunet.resources.ConfigError, match="evaluation.ensemble.*sweep.seeds"):
        _seeds_config(tmp_path, ensemble=True, seeds=(0,))
    with pytest.raises(tlunet.resources.ConfigError, match="evaluation.ensemble must be true or false"):
        _seeds_config(tmp_path, ensemble="yes")


@pytest.mark.slow
def test_the_console_script_makes_an_ensemble_of_runs_that_exports_with_their_settings(two_seeds, tmp_path):
    members = [run / "model.keras" for run in two_seeds]
    done = _console("ensemble", *members, "--out", tmp_path / "ens", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "mean probability of 2 models" in done.stdout
    with open(tmp_path / "ens" / "config.yaml") as f:
        cfg = yaml.safe_load(f)
    with open(two_seeds[0] / "config.yaml") as f:
        first = yaml.safe_load(f)
    assert cfg["data"]["split"] == first["data"]["split"] and cfg["seed"] == first["seed"]  # the members' test split
    assert cfg["evaluation"] == {k: first["evaluation"][k] for k in ("tta", "threshold", "largest_component")}
    assert cfg["model"] == {"name": "ensemble"}
    assert [m["model"] for m in cfg["ensemble"]] == [str(m) for m in members]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no optimizer-state mismatch on load, no custom_objects needed
        model = keras.models.load_model(tmp_path / "ens" / "model.keras")
    loaded = [keras.models.load_model(m) for m in members]
    x = np.random.default_rng(2).random((2, 32, 64, 1)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), (loaded[0](x).numpy() + loaded[1](x).numpy()) / 2, atol=1e-5)
    # tlunet export of the ensemble builds in the members' flip TTA and largest region, as for a run
    done = _console("export", tmp_path / "ens" / "model.keras", tmp_path / "sm", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "flip test-time augmentation" in done.stdout and "largest region" in done.stdout
    # tlunet evaluate of the ensemble: its input size, the members' data kind and evaluation settings
    done = _console("evaluate", tmp_path / "ens" / "model.keras", "--data", tlunet.sample_path("hc18_small"),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    n_test = yaml.safe_load((tmp_path / "ens" / "config.yaml").read_text())["n_test"]
    assert f"the {n_test} test cases of the run's split" in done.stdout and "at 32x64" in done.stdout
    assert "adf_mm" in done.stdout and "flip test-time" in done.stdout
    image = np.asarray(tf.io.decode_png(tf.io.read_file(
        str(Path(tlunet.sample_path("hc18_small")) / "training_set" / "044_HC.png")), channels=1))
    served = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: its variables live in it
    out = served.serve(tf.constant(image[None])).numpy()
    assert out.shape == (1, *image.shape[:2], 1)
    x = tf.image.resize(image[None] / 255.0, (32, 64), antialias=True)  # serve = the ensemble, flip TTA, largest region
    probs = (model(x) + tf.reverse(model(tf.reverse(x, [2])), [2])) / 2
    expected = keep_largest_region(tf.image.resize(probs, image.shape[:2])).numpy()
    assert np.abs(out - expected).max() < 1e-4


def _copy_run(run, to, change=None):
    """A copy of a run folder (model.keras, config.yaml) with `change(config)` applied."""
    to.mkdir()
    (to / "model.keras").write_bytes((run / "model.keras").read_bytes())
    with open(run / "config.yaml") as f:
        cfg = yaml.safe_load(f)
    if change:
        change(cfg)
    (to / "config.yaml").write_text(yaml.safe_dump(cfg))
    return to / "model.keras"


@pytest.mark.slow
def test_members_of_different_splits_or_evaluations_are_refused(two_seeds, tmp_path):
    first = two_seeds[0] / "model.keras"
    cases = {"split": (lambda c: c["data"].update(split=[0.6, 0.2, 0.2]), r"data\.split"),
             "fold": (lambda c: c.update(fold=1), "fold"),
             "tta": (lambda c: c["evaluation"].update(tta=None), "evaluation")}
    for name, (change, message) in cases.items():
        other = _copy_run(two_seeds[1], tmp_path / name, change)
        with pytest.raises(ValueError, match=rf"differ in {message}.*{name}/config\.yaml"):
            write_ensemble([first, other], tmp_path / "ens")
        assert not (tmp_path / "ens").exists()  # nothing half-written
    # a key an older config lacks means the runner's default: largest_component false
    old = _copy_run(two_seeds[0], tmp_path / "old", lambda c: c["evaluation"].pop("largest_component"))
    new = _copy_run(two_seeds[1], tmp_path / "new", lambda c: c["evaluation"].update(largest_component=False))
    path, _ = write_ensemble([old, new], tmp_path / "ens_old")
    with open(tmp_path / "ens_old" / "config.yaml") as f:
        assert yaml.safe_load(f)["evaluation"]["largest_component"] is False
    with pytest.raises(ValueError, match="differ in evaluation"):  # but not true
        write_ensemble([old, two_seeds[1] / "model.keras"], tmp_path / "ens")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.keras").write_bytes((two_seeds[1] / "model.keras").read_bytes())  # no config.yaml beside it
    with pytest.raises(ValueError, match="no run config.yaml beside it"):
        write_ensemble([first, bare / "model.keras"], tmp_path / "ens")


@pytest.mark.slow
def test_missing_copied_or_existing_files_are_refused(two_seeds, tmp_path):
    members = [run / "model.keras" for run in two_seeds]
    with pytest.raises(ValueError, match="is the same file as"):
        write_ensemble([members[0], _copy_run(two_seeds[0], tmp_path / "copy")], tmp_path / "ens")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        write_ensemble([members[0], tmp_path / "missing.keras"], tmp_path / "ens")
    done = _console("ensemble", members[0], tmp_path / "missing.keras", "--out", tmp_path / "ens", cwd=tmp_path)
    assert done.returncode == 2 and "missing.keras" in done.stderr and "Traceback" not in done.stderr
    write_ensemble(members, tmp_path / "ens")
    assert sorted(os.listdir(tmp_path / "ens")) == ["config.yaml", "model.keras"]  # no temporary file left
    with pytest.raises(FileExistsError, match="not empty"):
        write_ensemble(members, tmp_path / "ens")
