"""Experiment configs (tlunet.runners.config): layering, overrides, key and value checks, named errors."""

import os

import pytest

import tlunet
from tlunet.runners import ConfigError, config_from_dict, load_config, run_experiment

from .test_image import TINY

@pytest.mark.parametrize("change,error", [
    ({"runs": []}, "runs"),
    ({"colour": "red"}, "unknown keys"),
    ({"training": {"epochz": 3}}, "unknown training keys"),
    ({"model": {"name": "resnet_unet"}}, "Unknown model"),
    ({"runs": [{"name": "x", "strategy": "decoder-only"}]}, "Unknown strategy"),
    ({"runs": [{"name": "x", "init": "pretrain"}]}, "no `pretrain` block"),
    ({"data": {"kind": "dicom"}}, "data.kind"),
])
def test_bad_configs_are_named(tmp_path, change, error):
    raw = {**TINY, **{k: v for k, v in change.items() if k not in ("training", "model", "data")}}
    for section in ("training", "model", "data"):
        if section in change:
            raw[section] = {**TINY[section], **change[section]}
    with pytest.raises(ConfigError, match=error):
        config_from_dict(raw, str(tmp_path / "bad.yaml"))


def test_shipped_configs_load_in_every_profile():
    for name in ("wang2023_fetal_head", "cheng2021_lung_us"):
        for profile in (None, "quick", "full"):
            cfg = load_config(name, profile)
            assert cfg.runs and cfg.profile == (profile or "default")
    quick = load_config("wang2023_fetal_head", "quick")
    assert quick.data.get("root") == "sample:hc18_small"
    assert os.path.isfile(os.path.join(tlunet.sample_path("hc18_small"), "training_set_pixel_size_and_HC.csv"))
    # every profile of every shipped experiment loads (a profile's model options must fit its
    # model); default roots never point outside the package: a bundled sample, `download`, or unset
    from tlunet.resources import find_config, read_config
    for name in tlunet.list_experiments():
        for profile in (None, *(read_config(find_config(name)).get("profiles") or {})):
            cfg = load_config(name, profile)
            for d in (cfg.data, *([cfg.pretrain.data] if getattr(cfg, "pretrain", None) else [])):
                root = d.get("root")
                assert root is None or root == "download" or str(root).startswith(("sample:", "/path/to")), (name, root)


def test_extra_data_keys_are_refused_outside_data(tmp_path):
    for section in ("training", "sweep"):
        with pytest.raises(ConfigError, match=f"unknown {section} keys \\['root'\\]"):
            config_from_dict({**TINY, section: {**TINY.get(section, {}), "root": "x"}}, str(tmp_path / "b.yaml"))


@pytest.mark.parametrize("bad,error", [
    ({"runs": {"all": {"strategy": "all"}}}, "`runs` must be a non-empty list"),
    ({"runs": [{"strategy": "all"}]}, "needs a `name`"),
    ({"training": [1, 2]}, "`training` must be a mapping"),
])
def test_malformed_configs_are_named(tmp_path, bad, error):
    with pytest.raises(ConfigError, match=error):
        config_from_dict({**TINY, **bad}, str(tmp_path / "b.yaml"))


def test_a_top_level_list_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: x\n")
    with pytest.raises(ConfigError, match="list.yaml: an experiment config is a mapping"):
        load_config(str(path))


@pytest.mark.parametrize("override,error", [
    ({"training": {"epochs": "abc"}}, r"training.epochs must be a whole number >= 1. Received: epochs='abc'"),
    ({"training": {"epochs": 0}}, "training.epochs must be a whole number"),
    ({"training": {"batch_size": -2}}, "training.batch_size must be"),
    ({"data": {"image_size": 5}}, "data.image_size must be a list of 2 whole numbers"),
    ({"data": {"split": [0.5, 0.5, 0.5]}}, "data.split must be 3 fractions"),
    ({"model": {"encoder_weigths": "imagenet"}}, r"unknown model keys \['encoder_weigths'\]"),
    ({"sweep": {"fractions": [0]}}, "sweep.fractions"),
    ({"pretrain": {"data": {"rot": "x"}}}, r"unknown pretrain.data keys \['rot'\]"),
])
def test_overrides_are_checked_like_the_file(tmp_path, override, error):
    with pytest.raises(ConfigError, match=error):
        config_from_dict(TINY, str(tmp_path / "t.yaml"), overrides=override)


def test_download_is_only_for_hc18(tmp_path):
    cfg = config_from_dict({**TINY, "data": {**TINY["data"], "kind": "pairs", "root": "download"}}, str(tmp_path / "t.yaml"))
    with pytest.raises(ConfigError, match="`download` fetches HC18 only"):
        run_experiment(cfg, out_dir=str(tmp_path), log=lambda *a: None)


def test_a_weights_file_that_does_not_fit_is_refused_before_any_training(tmp_path):
    from tlunet.runners.config import plan_runs, with_weights_file
    bad = tmp_path / "not_mobilenet.weights.h5"
    bad.write_bytes(b"not an h5 file")
    raw = {"name": "w", "data": {"kind": "hc18", "root": "sample:hc18_small", "image_size": [32, 64]},
           "model": {"name": "mobilenetv2_unet", "encoder_weights": "imagenet"},
           "runs": [{"name": "scratch", "strategy": "scratch", "model": {"encoder_weights": None}},
                    {"name": "decoder", "strategy": "decoder"},
                    {"name": "own", "strategy": "decoder", "model": {"encoder_weights": "imagenet"}}]}
    cfg = with_weights_file(config_from_dict(raw, str(tmp_path / "w.yaml")), str(bad))
    assert cfg.model.encoder_weights == str(bad) and cfg.runs[2].model(cfg.model).encoder_weights == str(bad)
    assert cfg.runs[0].model(cfg.model).encoder_weights is None  # scratch stays scratch
    with pytest.raises(ConfigError, match="not_mobilenet.weights.h5"):
        plan_runs(cfg, {})
