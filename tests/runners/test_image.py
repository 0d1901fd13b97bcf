"""The image runner (tlunet.runners.image) and the CLI commands end to end, on tiny synthetic data."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tlunet.cli import main
from tlunet.runners import config_from_dict, run_experiment

TINY = {
    "name": "tiny",
    "data": {"kind": "lung_us_phantom", "n": 12, "phantom_size": [64, 64], "image_size": [32, 32],
             "split": [0.5, 0.25, 0.25], "augment": "cheng2021"},
    "model": {"name": "unet", "filters": [4, 8, 16, 32, 64]},
    "training": {"epochs": 1, "batch_size": 4},
    "runs": [{"name": "all", "strategy": "all"},
             # a {frozen: ...} strategy: a paper's preset that freezes is refused on random weights
             {"name": "two_stage", "stages": [{"strategy": {"frozen": ["bottleneck"]}, "epochs": 1},
                                              {"strategy": "all", "epochs": 1, "learning_rate": 1e-4}]}],
    "sweep": {"fractions": [0.5, 1.0], "folds": 2},
    "paper": {"dice": {"all": 0.828}},
}


@pytest.mark.slow
def test_runner_writes_every_output_and_skips_finished_runs(tmp_path):
    cfg = config_from_dict(TINY, str(tmp_path / "tiny.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    assert [(r["run"], r["fraction"]) for r in rows] == [("all", 0.5), ("all", 1.0),
                                                         ("two_stage", 0.5), ("two_stage", 1.0)]
    assert all(r["folds"] == 2 and r["n_test"] == 12 for r in rows)  # the two folds test all 12 cases
    exp = tmp_path / "results" / "tiny"
    # each summary row is the mean over its folds of the per-case Dice each fold wrote
    for r in rows:
        stem = f"{r['run']}-frac{r['fraction']:g}"
        folds = [np.mean([float(c["dice"]) for c in csv.DictReader(open(exp / f"{stem}-fold{k}" / "metrics.csv"))])
                 for k in (0, 1)]
        assert r["dice"] == pytest.approx(np.mean(folds)) and r["dice_sd"] == pytest.approx(np.std(folds))
    run = exp / "two_stage-frac1-fold1"
    for name in ("config.yaml", "history.csv", "metrics.csv", "summary.md", "model.keras",
                 "figures/learning_curves.png", "figures/overlays.png"):
        assert (run / name).exists(), name
    with open(run / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # one epoch per stage, merged
    saved = yaml.safe_load(open(run / "config.yaml"))
    assert saved["weights_used"] == "random init (no pretrained encoder)" and saved["fold"] == 1
    summary = open(exp / "summary.md").read()
    assert "| all | 0.5 |" in summary and "0.828" in summary
    assert "HC MAE" not in summary  # no head circumferences in these data: no column of dashes
    # both runs end with every weight trainable: a Dice-vs-trainable-parameters plot would say nothing
    assert len({r["trainable_params"] for r in rows}) == 1 and not (exp / "dice_vs_params.png").exists()
    # the smaller fraction trained on fewer images
    n = [yaml.safe_load(open(exp / f"all-frac{f}-fold0" / "config.yaml"))["n_train"] for f in ("0.5", "1")]
    assert n[0] < n[1]
    # started again: nothing retrains, the same numbers come back
    logs = []
    again = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=logs.append)
    assert sum("skipped" in line for line in logs) == 8
    assert [r["dice"] for r in again] == [r["dice"] for r in rows]


def _write_pairs(root, n=8, size=(40, 48)):
    from tlunet.data.phantoms import fetal_head
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        head = fetal_head(size, seed=i)
        Image.fromarray(head["image"]).save(root / "images" / f"{i}.png")
        Image.fromarray(head["mask"] * 255).save(root / "masks" / f"{i}.png")
    return root


@pytest.mark.slow
def test_cli_train_evaluate_predict_export(tmp_path, capsys):
    data = _write_pairs(tmp_path / "data")
    out = tmp_path / "results"
    assert main(["train", "--model", "unet", "--data", str(data), "--image-size", "32,32",
                 "--epochs", "1", "--batch-size", "4", "--holdout", "0.25", "--out", str(out)]) == 0
    model_path = out / "train" / "all" / "model.keras"
    assert model_path.exists()
    capsys.readouterr()
    assert main(["evaluate", str(model_path), "--data", str(data), "--csv", str(tmp_path / "m.csv")]) == 0
    printed = capsys.readouterr().out
    assert "dice:" in printed and "test cases of the run's split" in printed
    with open(tmp_path / "m.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # the run's 2 test cases of 8
    assert main(["predict", str(model_path), str(data / "images"), str(tmp_path / "pred"),
                 "--pixel-size", "0.1"]) == 0
    assert len(os.listdir(tmp_path / "pred" / "masks")) == 8
    assert main(["export", str(model_path), str(tmp_path / "sm")]) == 0
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: its variables live in it
    served = loaded.serve(tf.constant(np.zeros((1, 40, 48, 1), np.uint8)))
    assert served.shape == (1, 40, 48, 1)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "not_a_model.keras"
    bad.write_text("nope")
    assert main(["export", str(bad), str(tmp_path / "sm")]) == 2
    assert "not a loadable .keras model" in capsys.readouterr().err
    assert main(["train", "--model", "unet", "--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["experiment", "wang2023_fetal_head", "--profile", "turbo"]) == 2
    assert "no profile 'turbo'" in capsys.readouterr().err


# ------------------------------------------------------------------ bugs the three copies hid
def test_limit_on_phantom_data_keeps_the_arrays_and_names_the_cases(tmp_path):
    from tlunet.data.kinds import load_image_set
    cfg = config_from_dict(TINY, str(tmp_path / "tiny.yaml"))
    images, masks, meta, groups, _ = load_image_set({**cfg.data.to_block(), "limit": 5}, None)
    assert images.shape == (5, 32, 32, 1) and masks.shape == (5, 32, 32)
    assert [m["name"] for m in meta] == [f"phantom_{i:03d}" for i in range(5)] and groups == list(range(5))
    full = load_image_set(cfg.data.to_block(), None)
    assert np.array_equal(full[0][:5], images)  # the same first five, not re-read from "files"


class _Fixed:
    """A stand-in model whose predictions are given (evaluate_cases only calls predict)."""

    def __init__(self, probs):
        self.probs = probs

    def predict(self, x, batch_size=None, verbose=0):
        return self.probs


def test_multiclass_runs_score_the_foreground_classes_not_the_background():
    from tlunet.postprocess import PostProcess
    from tlunet.scoring import evaluate_cases
    true = np.zeros((1, 8, 8), np.uint8)
    true[0, :4, :4], true[0, 4:, 4:] = 1, 2
    perfect = np.eye(3, dtype=np.float32)[true]
    background_only = np.eye(3, dtype=np.float32)[np.zeros_like(true)]
    images = np.zeros((1, 8, 8, 1), np.uint8)
    rows, labels = evaluate_cases(_Fixed(perfect), images, true, [{"name": "a"}], PostProcess())
    assert rows[0]["dice"] == 1.0 and np.array_equal(labels, true)
    rows, _ = evaluate_cases(_Fixed(background_only), images, true, [{"name": "a"}], PostProcess())
    assert rows[0]["dice"] == 0.0  # channel 0 (background) would have scored 0.67


@pytest.mark.slow
def test_phantom_cases_are_named_in_metrics_and_figures(tmp_path):
    raw = {**TINY, "runs": [{"name": "all", "strategy": "all"}], "sweep": {"fractions": [1.0], "folds": None}}
    run_experiment(config_from_dict(raw, str(tmp_path / "t.yaml")), out_dir=str(tmp_path), log=lambda *a: None)
    with open(tmp_path / "tiny" / "all" / "metrics.csv") as f:
        names = [r["case"] for r in csv.DictReader(f)]
    assert names and all(n.startswith("phantom_") for n in names)


@pytest.mark.slow
def test_a_pretrain_block_without_data_pretrains_on_the_main_data(tmp_path):
    raw = {**TINY, "pretrain": {"training": {"epochs": 1}}, "sweep": {"fractions": [1.0], "folds": None},
           "runs": [{"name": "from source", "init": "pretrain", "strategy": "all"}]}
    rows = run_experiment(config_from_dict(raw, str(tmp_path / "p.yaml")), out_dir=str(tmp_path), log=lambda *a: None)
    assert rows[0]["weights"].startswith("pre-trained on the source task (") and "layers copied" in rows[0]["weights"]
    assert (tmp_path / "tiny" / "pretrain" / "source.keras").is_file()


def test_training_options_reach_the_run_and_its_config(tmp_path):
    """--set training.lr_schedule / training.tensorboard: the rate follows the schedule in history.csv,
    TensorBoard logs are written, and both are recorded in the run's config.yaml."""
    raw = {**TINY, "runs": [{"name": "all", "strategy": "all"}], "sweep": {"fractions": [1.0]}}
    cfg = config_from_dict(raw, str(tmp_path / "c.yaml"), overrides={
        "training": {"epochs": 2, "learning_rate": 0.01, "tensorboard": True,
                     "lr_schedule": {"name": "cosine", "warmup_epochs": 1}}})
    run_experiment(cfg, out_dir=str(tmp_path / "out"), log=lambda *a: None)
    run = tmp_path / "out" / "tiny" / "all"
    with open(run / "history.csv") as f:
        rates = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    assert rates == pytest.approx([0.005, 0.01])  # warm-up epoch at half the rate, then the peak
    assert list((run / "stage0_all" / "tensorboard").rglob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["lr_schedule"] == {"name": "cosine", "warmup_epochs": 1}
    assert saved["training"]["tensorboard"] is True


@pytest.mark.slow
def test_seed_sweep_records_each_runs_seed_and_aggregates_over_seeds(tmp_path):
    cfg = config_from_dict({**TINY, "runs": [{"name": "all", "strategy": "all"}],
                            "sweep": {"fractions": [1.0], "seeds": [0, 1]}}, str(tmp_path / "s.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    exp = tmp_path / "results" / "tiny"
    saved = [yaml.safe_load(open(exp / f"all-seed{s}" / "config.yaml")) for s in (0, 1)]
    assert [c["run_seed"] for c in saved] == [0, 1]  # the seed each run used, not only the config's
    per_seed = [np.mean([float(c["dice"]) for c in csv.DictReader(open(exp / f"all-seed{s}" / "metrics.csv"))])
                for s in (0, 1)]
    assert len(rows) == 1 and rows[0]["dice"] == pytest.approx(np.mean(per_seed))
    assert rows[0]["dice_sd"] == pytest.approx(np.std(per_seed))
