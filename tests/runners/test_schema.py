"""The typed config: one parser for every task, migrations of old key names, the data-kind registry
and the flat plan of jobs."""

import dataclasses

import pytest
import yaml

from tlunet.data.kinds import DATA_KINDS, data_kind, kinds_of, register_data_kind
from tlunet.runners import TASKS, ConfigError, config_from_dict, load_config
from tlunet.runners.base import Runner
from tlunet.runners.results import changed_settings, write_config

VOLUME = {"name": "v", "task": "volume", "data": {"kind": "ct_phantom", "n": 4, "shape": [8, 16, 16],
                                                   "patch_size": [8, 16, 16]},
          "model": {"name": "unet3d", "filters": [4, 8]}, "runs": [{"name": "scratch"}]}


def test_code_reads_typed_sections_that_cannot_change(tmp_path):
    cfg = load_config("wang2023_fetal_head", "quick")
    assert cfg.training.epochs == 35 and cfg.data.get("root") == "sample:hc18_small"
    assert isinstance(cfg.data.image_size, tuple) and load_config("wang2023_fetal_head", "cpu").evaluation.tta == "flip"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.epochs = 1  # noqa  (a run cannot change the config it was planned with)
    with pytest.raises(TypeError):
        cfg.data.given["root"] = "elsewhere"
    cheng = load_config("cheng2021_lung_us", "quick")
    with pytest.raises(TypeError):  # nested values too: a run's own model, the model's options
        cheng.runs[0].given["model"]["encoder_weights"] = "elsewhere.h5"
    with pytest.raises(TypeError):
        cheng.model.options["classes"] = 2


def test_the_mapping_a_run_records_is_the_config_as_laid_over_its_defaults():
    cfg = load_config("cheng2021_lung_us", "quick")
    saved = cfg.to_dict()
    assert saved["task"] == "image" and saved["profile"] == "quick"
    assert saved["data"]["n"] == 40 and saved["data"]["image_size"] == [64, 64]  # lists, not tuples
    assert saved["pretrain"] == {"data": {"kind": "pairs", "layout": "ecssd", "root": None, "channels": 1,
                                          "get": saved["pretrain"]["data"]["get"], "limit": 120},
                                 "model": {"name": "unet"},
                                 "training": {"epochs": 4, "learning_rate": 0.001, "precise_bn": True}}
    assert yaml.safe_load(yaml.safe_dump(saved)) == saved


@pytest.mark.parametrize("old,new", [(True, "flip"), (False, None)])
def test_a_volume_config_written_with_inference_loads_under_evaluation(tmp_path, old, new):
    raw = {**VOLUME, "inference": {"tta": old, "overlap": 0.25},
           "profiles": {"quick": {"inference": {"batch_size": 1}}}}
    cfg = config_from_dict(raw, str(tmp_path / "v.yaml"), "quick", {"inference": {"nsd_tolerance_mm": 2.0}})
    assert (cfg.evaluation.tta, cfg.evaluation.overlap, cfg.evaluation.batch_size,
            cfg.evaluation.nsd_tolerance_mm) == (new, 0.25, 1, 2.0)
    assert "inference" not in cfg.to_dict()


def test_a_volume_run_recorded_with_inference_is_still_this_configs(tmp_path):
    cfg = config_from_dict({**VOLUME, "evaluation": {"tta": "flip"}}, str(tmp_path / "v.yaml"))
    old = cfg.to_dict()
    old["inference"] = {k: v for k, v in old.pop("evaluation").items() if k != "threshold"} | {"tta": True}
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "config.yaml", "w") as f:
        yaml.safe_dump(old | {"run": {"name": "scratch"}}, f)
    assert changed_settings(str(tmp_path / "run"), cfg, cfg.runs[0], type(cfg).defaults()) == []
    other = config_from_dict(VOLUME, str(tmp_path / "v.yaml"))  # tta null: not the run's setting
    assert changed_settings(str(tmp_path / "run"), other, other.runs[0], type(other).defaults()) == \
        ["evaluation.tta: 'flip' -> None"]


@pytest.mark.parametrize("change,message", [
    ({"runs": [{"name": "a", "stratgy": "all"}]}, r"unknown run 'a' keys \['stratgy'\] \(did you mean 'strategy'\?\)"),
    ({"data": {"kind": "lung_us_phantom", "n": 4, "phantom_siz": [32, 32]}},
     r"unknown data keys \['phantom_siz'\] \(did you mean 'phantom_size'\?\)"),
    ({"data": {"kind": "nifti"}}, r"data.kind 'nifti' is not one of \['hc18', 'hdf5_patches', 'lung_us_phantom', "),
    ({"evaluation": {"overlap": 0.5}}, r"unknown evaluation keys \['overlap'\]"),
    ({"seed": "zero"}, r"seed must be a whole number"),
])
def test_the_schema_names_the_file_and_key(tmp_path, change, message):
    raw = {"name": "x", "data": {"kind": "lung_us_phantom", "n": 4}, "model": {"name": "unet"},
           "runs": [{"name": "a"}]} | change
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(raw, str(tmp_path / "x.yaml"))
    assert str(info.value).startswith(str(tmp_path / "x.yaml") + ": ")


def test_every_task_runner_reads_kinds_from_one_registry():
    assert set(TASKS) == {"image", "volume", "classification"}
    assert kinds_of("image", folders_only=True) == ["hc18", "hdf5_patches", "lung_us_ribs", "pairs"]  # `--kind`
    assert data_kind("pairs", "lines").task == "lines" and data_kind("pairs", "image").task == "image"
    with pytest.raises(ValueError, match=r"kind 'hc19' is not one of \['hc18', 'hdf5_patches', 'lung_us_phantom', "
                                         r"'lung_us_ribs', 'pairs'\] \(did you mean 'hc18'\?\)"):
        data_kind("hc19", "image")


def test_a_registered_kind_is_read_by_the_runner_and_its_keys_accepted(tmp_path, monkeypatch):
    import numpy as np

    from tlunet.data import SegmentationSet

    monkeypatch.setitem(DATA_KINDS, "image", dict(DATA_KINDS["image"]))

    @register_data_kind("squares", "image", keys=("side",))
    def _squares(block, root, seed):
        """Squares of a given side."""
        images = np.zeros((6, 16, 16, 1), np.uint8)
        masks = np.zeros((6, 16, 16), np.uint8)
        images[:, :block["side"], :block["side"]] = 255
        masks[:, :block["side"], :block["side"]] = 1
        names = [f"s{i}" for i in range(6)]
        return SegmentationSet(names, names, [{"name": n} for n in names], arrays=(images, masks)), names, "squares"

    cfg = config_from_dict({"name": "sq", "data": {"kind": "squares", "side": 8, "image_size": [16, 16]},
                            "model": {"name": "unet"}, "runs": [{"name": "a"}]}, str(tmp_path / "sq.yaml"))
    from tlunet.runners.image import load_images
    images, masks, _, groups, source = load_images(cfg, cfg.data)
    assert images.shape == (6, 16, 16, 1) and masks[0, :8, :8].all() and source == "squares"


def test_the_plan_is_runs_by_fractions_by_folds_by_seeds(tmp_path):
    cfg = config_from_dict({"name": "p", "data": {"kind": "lung_us_phantom", "n": 20}, "model": {"name": "unet"},
                            "sweep": {"fractions": [0.5, 1.0], "folds": 2, "seeds": [3, 4]},
                            "runs": [{"name": "a"}, {"name": "b"}]}, str(tmp_path / "p.yaml"))
    splits = [([0, 1, 2, 3], [4], [5]), ([5, 6, 7, 8], [9], [0])]
    jobs = Runner(cfg, str(tmp_path)).plan([(r, None, "random init") for r in cfg.runs], splits, list(range(10)))
    assert [j.name for j in jobs][:5] == ["a-frac0.5-fold0-seed3", "a-frac0.5-fold0-seed4", "a-frac0.5-fold1-seed3",
                                          "a-frac0.5-fold1-seed4", "a-frac1-fold0-seed3"]
    assert len(jobs) == 16 and jobs[-1].label == "[16/16] b-frac1-fold1-seed4"
    assert [len(j.train) for j in jobs[:2]] == [2, 2] and jobs[0].train != jobs[1].train  # the seed draws the fraction
    assert jobs[0].group == "a-frac0.5-fold0" and {j.seed for j in jobs} == {3, 4}


def test_write_config_records_typed_configs_as_their_mapping(tmp_path):
    cfg = load_config("bressem2021_covid3d", "quick")
    write_config(str(tmp_path), cfg, run=cfg.runs[0], fold=0)
    saved = yaml.safe_load(open(tmp_path / "config.yaml"))
    assert saved["evaluation"]["tta"] is None and saved["run"] == {"name": "R3D-18 Kinetics-400", "strategy": "all"}


def test_mappings_in_a_config_reach_the_library_as_plain_values(tmp_path):
    """A frozen config hands TensorFlow-facing code plain lists and dicts: an augmentation or a
    schedule written as a mapping trains."""
    from tlunet.runners import run_experiment
    cfg = config_from_dict({"name": "m", "data": {"kind": "lung_us_phantom", "n": 8, "phantom_size": [32, 32],
                                                  "image_size": [32, 32], "augment": {"hflip": 0.5, "rotation": 5.0},
                                                  "split": [0.5, 0.25, 0.25]},
                            "model": {"name": "unet", "filters": [4, 8]},
                            "training": {"epochs": 1, "batch_size": 4, "lr_schedule": {"name": "cosine", "warmup_epochs": 0}},
                            "runs": [{"name": "a"}]}, str(tmp_path / "m.yaml"))
    rows = run_experiment(cfg, out_dir=str(tmp_path / "out"), log=lambda *a: None)
    assert rows[0]["epochs"] == 1 and (tmp_path / "out" / "m" / "a" / "done.json").is_file()
