"""The volume experiment runner (`task: volume`) end to end on tiny CT phantoms, and NIfTI folders."""


import csv

import nibabel as nib
import numpy as np
import pytest
import yaml

from tlunet.data import DataError, find_nifti_pairs
from tlunet.data.phantoms import ct_volume
from tlunet.runners import ConfigError, config_from_dict, load_config, run_experiment

TINY3D = {
    "name": "tiny3d",
    "task": "volume",
    "data": {"kind": "ct_phantom", "n": 4, "shape": [16, 40, 40], "patch_size": [16, 32, 32],
             "split": [0.5, 0.25, 0.25]},
    "model": {"name": "unet3d", "filters": [4, 8, 16]},
    "training": {"epochs": 1, "batch_size": 2, "patches_per_volume": 2},
    "evaluation": {"overlap": 0.25},
    "pretrain": {"data": {"n": 3, "lesion_hu": 30, "seed_offset": 100}, "training": {"epochs": 1}},
    "runs": [{"name": "scratch", "transfer": "scratch"}, {"name": "hybrid", "transfer": "hybrid"},
             {"name": "body", "transfer": "body"}],
    "paper": {"dice": {"hybrid": 0.7}},
}


@pytest.mark.slow
def test_volume_runner_pretrains_transfers_evaluates_and_skips_finished_runs(tmp_path):
    cfg = config_from_dict(TINY3D, str(tmp_path / "tiny.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    assert [r["run"] for r in rows] == ["scratch", "hybrid", "body"]
    assert all(r["n_test"] == 1 for r in rows)  # 4 phantoms: 2 train, 1 validation, 1 test
    for r in rows:  # each row is the mean of the per-volume measures its run wrote
        cases = list(csv.DictReader(open(tmp_path / "results" / "tiny3d" / r["run"] / "metrics.csv")))
        assert r["dice"] == pytest.approx(np.mean([float(c["dice"]) for c in cases]))
    exp = tmp_path / "results" / "tiny3d"
    assert (exp / "pretrain" / "source.keras").exists()
    for name in ("config.yaml", "metrics.csv", "model.keras", "figures/overlays.png",
                 "figures/learning_curves.png", "done.json"):
        assert (exp / "hybrid" / name).exists(), name
    saved = yaml.safe_load(open(exp / "body" / "config.yaml"))
    assert saved["weights_used"].startswith("body: ") and "from the source model" in saved["weights_used"]
    assert not set(saved["train_cases"]) & set(saved["test_cases"])
    assert rows[1]["trainable_params"] > rows[0]["trainable_params"]  # two encoders + fusion
    summary = open(exp / "summary.md").read()
    assert "| hybrid | hybrid |" in summary and "0.7" in summary and "NSD@1 mm" in summary
    logs = []
    again = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=logs.append)
    assert sum("skipped" in line for line in logs) == 3
    assert [r["dice"] for r in again] == [r["dice"] for r in rows]


def _write_nifti(root, n=3, shape=(16, 32, 32)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        ct = ct_volume(shape, seed=i)
        affine = np.diag([*ct["spacing"][::-1], 1.0])
        nib.save(nib.Nifti1Image(ct["image"].transpose(2, 1, 0), affine), root / "images" / f"case{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(ct["mask"].transpose(2, 1, 0), affine), root / "masks" / f"case{i}.nii.gz")
    return root


@pytest.mark.slow
def test_volume_runner_reads_nifti_folders_and_folds(tmp_path):
    root = _write_nifti(tmp_path / "ct")
    raw = {**TINY3D, "data": {"kind": "nifti", "root": str(root), "patch_size": [16, 32, 32]},
           "runs": [{"name": "r3d"}],
           "sweep": {"folds": 3, "train_on": "fold"}}
    raw.pop("pretrain")
    cfg = config_from_dict(raw, str(tmp_path / "nifti.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    assert rows[0]["folds"] == 3 and rows[0]["n_train"] == 1 and rows[0]["n_test"] == 6  # 2 per fold, summed
    metrics = (tmp_path / "results" / "tiny3d" / "r3d-fold0" / "metrics.csv").read_text()
    assert "case" in metrics and "hd95_mm" in metrics


def test_find_nifti_pairs_matches_and_names_unmatched_cases(tmp_path):
    root = _write_nifti(tmp_path / "ct", n=2)
    assert [c for c, _, _ in find_nifti_pairs(root)] == ["case0", "case1"]
    (root / "masks" / "case1.nii.gz").unlink()
    with pytest.raises(DataError, match="case1 \\(no label\\)"):
        find_nifti_pairs(root)
    with pytest.raises(DataError, match="labelsTr"):
        find_nifti_pairs(root, "msd")


@pytest.mark.parametrize("change,error", [
    ({"runs": [{"name": "x", "transfer": "distill"}]}, "transfer 'distill'"),
    ({"data": {"kind": "dicom"}}, "data.kind"),
    ({"evaluation": {"overlap_ratio": 0.5}}, r"unknown evaluation keys \['overlap_ratio'\] \(did you mean 'overlap'\?\)"),
    ({"inference": {"overlap_ratio": 0.5}}, "unknown evaluation keys"),  # the former name, migrated
    ({"sweep": {"train_on": "half"}}, "train_on"),
    ({"task": "video"}, "task 'video'"),
])
def test_bad_volume_configs_are_named(tmp_path, change, error):
    raw = dict(TINY3D)
    for k, v in change.items():
        raw[k] = {**TINY3D[k], **v} if isinstance(v, dict) and k in TINY3D else v
    with pytest.raises(ConfigError, match=error):
        config_from_dict(raw, str(tmp_path / "bad.yaml"))
    no_source = {k: v for k, v in TINY3D.items() if k != "pretrain"}
    with pytest.raises(ConfigError, match="no `pretrain` block"):
        config_from_dict(no_source, str(tmp_path / "bad.yaml"))


def test_shipped_volume_configs_load_in_every_profile():
    for name in ("bressem2021_covid3d", "wang2020_lesion_transfer"):
        for profile in (None, "quick", "full"):
            cfg = load_config(name, profile)
            assert cfg.TASK == "volume" and cfg.runs
    wang = load_config("wang2020_lesion_transfer")
    assert {r.get("transfer") for r in wang.runs} == {"scratch", "continual", "body", "encoder", "hybrid"}
    assert wang.sweep.to_dict() == {"folds": 5, "train_on": "fold", "seeds": None}


@pytest.mark.slow
def test_the_source_is_built_at_the_pretrain_blocks_patch_size(tmp_path):
    from tlunet.runners.volume import VolumeRunner
    raw = {**TINY3D, "pretrain": {**TINY3D["pretrain"], "data": {**TINY3D["pretrain"]["data"], "patch_size": [16, 16, 16]}}}
    cfg = config_from_dict(raw, str(tmp_path / "t.yaml"))
    assert list(cfg.data.patch_size) != [16, 16, 16]
    runner = VolumeRunner(cfg, str(tmp_path), 0, lambda *a: None)
    source = runner.pretrain()
    assert tuple(source.input_shape[1:4]) == (16, 16, 16)


def test_unavailable_pretrained_weights_skip_the_run_and_say_so_in_the_log(tmp_path, monkeypatch, capsys):
    import tlunet
    from tlunet.runners.config import plan_runs

    def offline(name, **kwargs):
        if kwargs.get("encoder_weights") == "kinetics400":
            raise RuntimeError("no network")
        return real(name, **kwargs)
    real = tlunet.build_model
    monkeypatch.setattr(tlunet, "build_model", offline)
    cfg = config_from_dict({**TINY3D, "model": {"name": "resnet18_3d_unet", "encoder_weights": "kinetics400"},
                            "runs": [{"name": "kinetics"}, {"name": "random", "model": {"encoder_weights": None}}]},
                           str(tmp_path / "t.yaml"))
    ready, skipped = plan_runs(cfg, {})
    assert [r.name for r, _, _ in ready] == ["random"] and skipped[0][0] == "kinetics"
    assert "kinetics400 weights could not be downloaded" in skipped[0][1]
    assert capsys.readouterr().out == ""  # nothing printed behind the caller's log


@pytest.mark.slow
def test_volume_seed_sweep_records_each_seed_and_reports_the_spread_over_seeds(tmp_path):
    """Folds x seeds: one folder per (fold, seed) recording its seed; the summary's mean and sd over
    all four runs, each fold's test cases counted once, and the table says what the ± is over."""
    cfg = config_from_dict({**TINY3D, "runs": [{"name": "body", "transfer": "body"}],
                            "sweep": {"folds": 2, "seeds": [5, 6]}}, str(tmp_path / "s.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    exp = tmp_path / "results" / "tiny3d"
    names = [f"body-fold{k}-seed{s}" for k in (0, 1) for s in (5, 6)]
    assert [yaml.safe_load(open(exp / n / "config.yaml"))["run_seed"] for n in names] == [5, 6, 5, 6]
    dice = [np.mean([float(r["dice"]) for r in csv.DictReader(open(exp / n / "metrics.csv"))]) for n in names]
    losses = [[r["loss"] for r in csv.DictReader(open(exp / n / "history.csv"))] for n in names[:2]]
    assert losses[0] != losses[1]  # the seeds trained different models (at 1 epoch both may mark everything)
    assert len(rows) == 1 and rows[0]["dice"] == pytest.approx(np.mean(dice))
    assert rows[0]["dice_sd"] == pytest.approx(np.std(dice)) and rows[0]["seeds"] == 2 and rows[0]["folds"] == 2
    assert rows[0]["n_test"] == 4  # every volume tested once per seed, counted once
    assert "Dice: mean ± sd (population sd) over the 2 × 2 runs of 2 folds and 2 seeds (5, 6;" in \
        (exp / "summary.md").read_text()


@pytest.mark.slow
def test_precise_bn_saves_the_batch_statistics_of_the_training_patches(tmp_path):
    """With training.precise_bn the saved model's BatchNorm statistics are the average over the
    training patches under its final weights: recomputing them from the same patches changes nothing.
    The run has two stages, the second with the encoder frozen: the encoder's statistics were
    recomputed when its stage ended, so they hold too."""
    import keras

    from tlunet.data import experiment_splits
    from tlunet.data.kinds import load_volumes
    from tlunet.runners.volume import patches
    from tlunet.train import precise_bn

    raw = {k: v for k, v in TINY3D.items() if k not in ("pretrain", "paper")}
    stages = [{"strategy": "all", "epochs": 1}, {"strategy": {"trainable": ["decoder", "head"]}, "epochs": 1}]
    raw = {**raw, "runs": [{"name": "scratch", "stages": stages}], "training": {**TINY3D["training"], "precise_bn": True}}
    cfg = config_from_dict(raw, str(tmp_path / "tiny.yaml"))
    run_experiment(cfg, out_dir=str(tmp_path / "results"), log=lambda *a: None)
    run = tmp_path / "results" / "tiny3d" / "scratch"
    assert yaml.safe_load(open(run / "config.yaml"))["training"]["precise_bn"] is True
    model = keras.models.load_model(run / "model.keras")
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]  # unet3d is flat
    frozen = [l.name for l in bns if not l.trainable]  # the encoder's, frozen by the second stage
    assert frozen and len(frozen) < len(bns), frozen
    saved = [(l.moving_mean.numpy().copy(), l.moving_variance.numpy().copy()) for l in bns]
    assert bns and any(np.abs(m).max() > 1e-3 for m, _ in saved)
    cases, _ = load_volumes(cfg.data.to_block(), None, seed=cfg.seed)
    train = experiment_splits(len(cases), list(cfg.data.split), cfg.seed, validation=False)[0][0]

    def recomputed_as_saved(layers):
        precise_bn(model, patches(cfg.training, cfg.data, [cases[i] for i in train], cfg.seed, False))
        for (mean, variance), layer in zip(saved, bns):
            if layer.name in layers:
                np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5, err_msg=layer.name)
                np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-5,
                                           err_msg=layer.name)

    # The decoder's, as the last stage left them (the encoder in inference mode, as it trained then).
    recomputed_as_saved([l.name for l in bns if l.trainable])
    for layer in bns:  # the encoder's, as the first stage left them (everything training)
        layer.trainable = True
    recomputed_as_saved(frozen)
