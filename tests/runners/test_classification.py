"""The classification runner (Gare et al. 2022 reverse transfer) end to end, and its configs."""

import csv
import json

import pytest

from tlunet.runners import ConfigError, config_from_dict, load_config, run_experiment


TINY_CLS = {
    "name": "tinycls",
    "task": "classification",
    "data": {"kind": "lung_us_videos", "n_videos": 3, "frames_per_video": 2, "phantom_size": [64, 64],
             "image_size": [32, 32], "split": [0.34, 0.33, 0.33]},
    "segmentation": {"data": {"n": 12, "phantom_size": [64, 64], "image_size": [32, 32]},
                     "model": {"filters": [4, 8, 16]}, "training": {"epochs": 1, "batch_size": 4}},
    "classifier": {"hidden": 8},
    "training": {"epochs": 1, "batch_size": 4},
    "explain": {"n": 2},
    "runs": [{"name": "dense", "init": "dense"}, {"name": "sparse", "init": "sparse"},
             {"name": "scratch", "init": "random"}],
}


@pytest.mark.slow
def test_reverse_transfer_runner_end_to_end(tmp_path):
    cfg = config_from_dict(TINY_CLS, str(tmp_path / "cls.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    assert [r["init"] for r in rows] == ["dense", "sparse", "random"]
    assert all(r["n_test_videos"] >= 3 and r["n_test_frames"] == rows[0]["n_test_frames"] for r in rows)
    assert rows[0]["seg_val_dice"] > 0 and rows[2]["seg_val_dice"] != rows[2]["seg_val_dice"]  # random: no seg model
    exp = tmp_path / "results" / "tinycls"
    for kind in ("dense", "sparse"):
        assert (exp / f"segmentation_{kind}" / "source.keras").exists()
    run = exp / "dense"
    m = json.loads((run / "metrics.json").read_text())
    assert sum(map(sum, m["confusion"])) == rows[0]["n_test_frames"]
    assert (run / "figures" / "confusion.png").exists()
    assert len(list((run / "figures").glob("explain_*.png"))) == 2
    preds = (run / "predictions.csv").read_text().splitlines()
    assert len(preds) == rows[0]["n_test_frames"] + 1 and "p_covid" in preds[0]
    # test videos are whole: no video has frames in training too
    test_videos = {r["video"] for r in csv.DictReader(open(run / "predictions.csv"))}
    assert len(test_videos) == rows[0]["n_test_videos"]
    logs = []
    run_experiment(cfg, out_dir=str(tmp_path / "results"), log=logs.append)
    assert sum("skipped" in line for line in logs) == 3


def test_shipped_reverse_transfer_config_and_bad_configs(tmp_path):
    for profile in (None, "quick", "full"):
        cfg = load_config("gare2022_reverse_transfer", profile)
        assert {r.get("init") for r in cfg.runs} == {"dense", "sparse", "random"}
    assert load_config("gare2022_reverse_transfer", "full").data.kind == "class_folders"
    for change, error in [({"runs": [{"name": "x", "init": "imagenet"}]}, "init must be one of"),
                          ({"data": {**TINY_CLS["data"], "kind": "dicom"}}, "data.kind"),
                          ({"classifier": {"inputs": "logits"}}, "classifier.inputs"),
                          ({"training": {"epochz": 1}}, "unknown training keys"),
                          ({"data": {**TINY_CLS["data"], "image_size": [64, 64]}}, "must be the same"),
                          ({"segmentation": {**TINY_CLS["segmentation"], "modle": {}}}, "unknown segmentation keys"),
                          ({"segmentation": {**TINY_CLS["segmentation"], "model": {"filterz": [4]}}},
                           r"unknown segmentation.model keys \['filterz'\]"),
                          ({"explain": {"m": 2}}, "unknown explain keys"),
                          ({"classes": ["covid", "covid"]}, "distinct class names"),
                          ({"runs": [{"name": "x", "init": "dense", "learning_rate": -1}]}, "learning_rate must be")]:
        with pytest.raises(ConfigError, match=error):
            config_from_dict({**TINY_CLS, **change}, str(tmp_path / "bad.yaml"))


@pytest.mark.slow
def test_seed_sweep_trains_each_classifier_per_seed_and_reports_mean_and_sd(tmp_path):
    """sweep.seeds: one run folder per seed (recording the seed it used), one source per kind shared
    by the seeds, and a summary row whose accuracy is the mean over seeds with their spread."""
    import numpy as np
    import yaml
    cfg = config_from_dict({**TINY_CLS, "runs": [{"name": "dense", "init": "dense"}], "sweep": {"seeds": [3, 4]},
                            "training": {"epochs": 2, "batch_size": 4}}, str(tmp_path / "cls.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    exp = tmp_path / "results" / "tinycls"
    assert sorted(p.name for p in exp.iterdir() if p.is_dir()) == ["dense-seed3", "dense-seed4", "segmentation_dense"]
    saved = [yaml.safe_load(open(exp / f"dense-seed{s}" / "config.yaml"))["run_seed"] for s in (3, 4)]
    assert saved == [3, 4]
    accuracy = [json.loads((exp / f"dense-seed{s}" / "metrics.json").read_text())["accuracy"] for s in (3, 4)]
    probs = [(exp / f"dense-seed{s}" / "predictions.csv").read_text() for s in (3, 4)]
    assert probs[0] != probs[1]  # the seeds trained different classifiers
    assert len(rows) == 1 and rows[0]["accuracy"] == pytest.approx(np.mean(accuracy))
    assert rows[0]["accuracy_sd"] == pytest.approx(np.std(accuracy)) and rows[0]["seeds"] == 2
    summary = (exp / "summary.md").read_text()
    assert f"{np.mean(accuracy):.3f} ± {np.std(accuracy):.3f}" in summary and "Mean ± sd (population sd) over 2 seeds (3, 4)" in summary
    with pytest.raises(ConfigError, match="sweep.seeds must be a list of distinct whole numbers"):
        config_from_dict({**TINY_CLS, "sweep": {"seeds": [1, 1]}}, str(tmp_path / "bad.yaml"))
