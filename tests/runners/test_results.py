"""The run folder and tables shared by every runner (tlunet.runners.results)."""

import math

import pytest

from tlunet.runners.results import aggregate_folds, cached_source, finish_run, read_done


def test_aggregate_folds_sums_test_cases_and_averages_epochs():
    rows = [{"run": "a", "fold": 0, "dice": 0.8, "n_test": 10, "epochs": 4, "weights": "random init"},
            {"run": "a", "fold": 1, "dice": 0.6, "n_test": 12, "epochs": 6, "weights": "random init"},
            {"run": "a", "fold": 2, "dice": float("nan"), "n_test": 11, "epochs": 5, "weights": "ImageNet"}]
    out = aggregate_folds(rows, ("dice",))
    assert out["dice"] == pytest.approx(0.7) and out["dice_sd"] == pytest.approx(0.1)
    assert out["n_test"] == 33 and out["epochs"] == 5 and out["folds"] == 3 and "fold" not in out
    assert out["weights"] == "random init; ImageNet"
    single = aggregate_folds(rows[:1], ("dice",))
    assert single["n_test"] == 10 and "dice_sd" not in single


def test_done_json_is_the_last_thing_a_run_writes(tmp_path):
    assert read_done(tmp_path) is None
    finish_run(str(tmp_path), {"run": "a", "dice": 0.9}, "a")
    assert read_done(tmp_path) == {"run": "a", "dice": 0.9}
    assert (tmp_path / "summary.md").read_text().startswith("# a")


def test_a_source_model_is_trained_once(tmp_path):
    import keras
    calls = []

    def train():
        calls.append(1)
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(1, name="d")(inputs)), {"val_dice": 0.5}

    model, info = cached_source(str(tmp_path / "pretrain"), train)
    again, info2 = cached_source(str(tmp_path / "pretrain"), train)
    assert len(calls) == 1 and info == info2 == {"val_dice": 0.5}
    assert math.isclose(float(again.get_layer("d").kernel.numpy().sum()), float(model.get_layer("d").kernel.numpy().sum()))


def test_a_run_made_before_precise_bn_was_the_default_keeps_its_meaning(tmp_path):
    """A config.yaml without training.precise_bn was made with Keras' running averages: reused as such
    under `precise_bn: false`, refused (named) under today's default, never re-labelled as recomputed."""
    import yaml

    from tlunet.resources import ConfigError
    from tlunet.runners import config_from_dict
    from tlunet.runners.results import read_done

    raw = {"name": "old", "data": {"kind": "lung_us_phantom", "n": 4, "image_size": [32, 32]},
           "model": {"name": "unet", "filters": [4, 8]}, "runs": [{"name": "r"}]}
    now = config_from_dict(raw, str(tmp_path / "c.yaml"))
    assert now.training.precise_bn is True  # the default, resolved so config.yaml records it
    defaults = type(now).defaults()
    run_dir = tmp_path / "old" / "r"
    run_dir.mkdir(parents=True)
    old = now.to_dict() | {"run": now.runs[0].to_dict()}
    old["training"] = {k: v for k, v in old["training"].items() if k != "precise_bn"}  # written before the key
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    (run_dir / "done.json").write_text('{"dice": 0.5}')
    with pytest.raises(ConfigError, match=r"training.precise_bn: False -> True"):
        read_done(str(run_dir), now, now.runs[0], defaults)
    before = config_from_dict({**raw, "training": {"precise_bn": False}}, str(tmp_path / "c.yaml"))
    assert read_done(str(run_dir), before, before.runs[0], defaults) == {"dice": 0.5}


def test_precise_bn_defaults_off_where_it_cannot_apply(tmp_path):
    from tlunet.runners import config_from_dict

    raw = {"name": "x", "data": {"kind": "lung_us_phantom"}, "model": {"name": "unet", "filters": [4, 8]},
           "runs": [{"name": "r"}]}
    assert config_from_dict({**raw, "training": {"batchnorm": "freeze"}}, "c.yaml").training.precise_bn is False
    assert config_from_dict({**raw, "training": {"distribute": "mirrored"}}, "c.yaml").training.precise_bn is False
