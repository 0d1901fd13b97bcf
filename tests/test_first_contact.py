"""What a newcomer meets first: a CLI that answers at once, flags and names in the messages,
channels that follow the data, honest short runs, and `evaluate` on the run's own test cases."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

import tlunet
from tlunet.cli import main
from tlunet.data import image_channels
from tlunet.data.phantoms import fetal_head

LIGHT_COMMANDS = [["--help"], ["--version"], ["train", "--help"], ["evaluate", "--help"], ["experiment", "--list"],
                  ["models"]]


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_answer_without_tensorflow(argv):
    # what makes `tlunet --help` slow is importing TensorFlow: these must not
    code = ("import sys\nfrom tlunet_cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nassert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_console_script_version_and_help_list_choices_and_defaults():
    script = os.path.join(os.path.dirname(sys.executable), "tlunet")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"tlunet {tlunet.__version__}"
    text = subprocess.run([script, "train", "--help"], capture_output=True, text=True, timeout=60).stdout
    text = " ".join(text.split())  # argparse wraps lines
    for shown in ("mobilenetv2_unet, unet, vgg16_unet", "decoder: decoder and head train", "(default: all)",
                  "one of bce_dice, dice, focal, tversky (default: bce_dice)", "wang2023", "(default: 256,256)",
                  "(default: none, random weights)", "auto (3 when the images have colour, else 1)"):
        assert shown in text, shown
    assert "unet3d" not in text.split("--model MODEL")[1].split("--data")[0]  # tlunet train is 2D


@pytest.mark.slow
def test_catalog_matches_the_registries():
    from tlunet.catalog import PATH, build_catalog

    with open(PATH, encoding="utf-8") as f:
        shipped = json.load(f)
    assert shipped == json.loads(json.dumps(build_catalog())), "stale: run `python -m tlunet.catalog`"


def test_models_table_from_the_catalog_has_the_built_counts(capsys):
    assert main(["models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    model = tlunet.build_model("vgg16_unet", input_shape=tlunet.get_model_info("vgg16_unet").reference_shape)
    assert rows["vgg16_unet"][2] == f"{model.count_params():,}"


def test_misspelt_names_get_the_nearest_and_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "mobilenet_unet", "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert "argument --model: unknown model 'mobilenet_unet' (did you mean 'mobilenetv2_unet'?)" in err
    data = _pairs(tmp_path / "d", 4)
    assert main(["train", "--model", "unet", "--data", str(data), "--set", "training.lerning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'learning_rate'?" in err and "cli.yaml" not in err
    assert main(["train", "--model", "unet", "--data", str(data), "--epochs", "0"]) == 2
    assert "tlunet train: error: --epochs must be a whole number >= 1" in capsys.readouterr().err


def test_train_refuses_a_paper_strategy_on_random_weights(tmp_path, capsys):
    data = _pairs(tmp_path / "d", 4)
    assert main(["train", "--model", "mobilenetv2_unet", "--data", str(data), "--strategy", "decoder",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "strategy 'decoder' freezes part of mobilenetv2_unet, which starts from random weights" in err
    assert "--encoder-weights imagenet or a weights file" in err and "--strategy all" in err
    assert not (tmp_path / "out").exists()


def test_a_config_run_on_random_weights_is_refused_but_a_custom_strategy_is_not(tmp_path):
    from tlunet.runners import ConfigError, config_from_dict

    raw = {"name": "x", "data": {"kind": "lung_us_phantom"}, "model": {"name": "unet", "filters": [4, 8]},
           "runs": [{"name": "r", "strategy": "frozen_bottleneck"}]}
    with pytest.raises(ConfigError, match="freezes part of unet"):
        config_from_dict(raw, str(tmp_path / "c.yaml"))
    raw["runs"] = [{"name": "r", "strategy": {"frozen": ["bottleneck"]}}]
    config_from_dict(raw, str(tmp_path / "c.yaml"))


def test_image_channels_follow_the_colour_not_the_file_mode(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_as_rgb.jpg", quality=90)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    colour = np.stack([grey, 255 - grey, grey // 2], -1)
    Image.fromarray(colour).save(tmp_path / "colour.jpg", quality=90)
    assert image_channels([tmp_path / "grey_as_rgb.jpg", tmp_path / "grey.png"]) == 1
    assert image_channels([tmp_path / "grey.png", tmp_path / "colour.jpg"]) == 3


def _pairs(root, n, rgb=False, size=(32, 32)):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        head = fetal_head(size, seed=i)
        image = head["image"]
        if rgb:  # a tinted copy: the same head, in colour
            image = np.stack([image, image // 2, 255 - image], -1)
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(head["mask"] * 255).save(root / "masks" / f"case{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """`tlunet train` on an RGB folder of 20 cases (one epoch, 32x32): (data, run folder, stdout)."""
    root = tmp_path_factory.mktemp("rgb")
    data = _pairs(root / "data", 20, rgb=True)
    out = root / "results"
    code = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "tlunet"), "train", "--model", "unet", "--data", str(data),
         "--image-size", "32,32", "--epochs", "1", "--batch-size", "4", "--set", "model.filters=[4,8,16]",
         "--holdout", "0.2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr
    return data, out / "train" / "all", code.stdout + code.stderr


def test_rgb_folders_train_rgb_and_say_so(rgb_run):
    _, run, text = rgb_run
    assert "channels 3 (the images have colour; --channels 1 trains on grey)" in text
    assert "32x32, 3 channels (RGB)" in text
    with open(run / "config.yaml") as f:
        assert yaml.safe_load(f)["data"]["channels"] == 3


def test_evaluate_scores_the_runs_test_cases_by_default(rgb_run, capsys):
    data, run, _ = rgb_run
    assert main(["evaluate", str(run / "model.keras"), "--data", str(data), "--csv", str(run.parent / "e.csv")]) == 0
    out = capsys.readouterr().out
    assert "the 4 test cases of the run's split (4 subjects; --split test|val|train|all)" in out
    with open(run / "metrics.csv") as f:
        expected = {r["case"]: float(r["dice"]) for r in csv.DictReader(f)}
    with open(run.parent / "e.csv") as f:
        got = {r["case"]: float(r["dice"]) for r in csv.DictReader(f)}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-4 for k in got)
    assert main(["evaluate", str(run / "model.keras"), "--data", str(data), "--split", "all"]) == 0
    assert "all 20 images" in capsys.readouterr().out
    assert main(["evaluate", str(run / "model.keras"), "--data", str(data), "--split", "train"]) == 0
    assert "the 12 train cases" in capsys.readouterr().out


def test_evaluate_on_other_data_scores_all_and_says_why(rgb_run, tmp_path, capsys):
    _, run, _ = rgb_run
    other = _pairs(tmp_path / "other", 5, rgb=True)
    assert main(["evaluate", str(run / "model.keras"), "--data", str(other)]) == 0
    assert "all 5 images (not the run's data, so its split does not apply)" in capsys.readouterr().out
    assert main(["evaluate", str(run / "model.keras"), "--data", str(other), "--split", "test"]) == 2
    assert "--split test scores part of the run's own split" in capsys.readouterr().err


@pytest.mark.slow
def test_the_quick_main_job_cut_to_two_epochs_learns(tmp_path):
    """The issue's repro: 2 epochs at 64x96 scored Dice 0.000 when BatchNorm kept its running averages."""
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "tlunet"), "experiment", "wang2023_fetal_head", "--quick",
         "--epochs", "2", "--set", "data.image_size=[64,96]", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "wang2023_fetal_head" / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["scratch"]["dice"]) > 0.6, rows["scratch"]
    with open(tmp_path / "wang2023_fetal_head" / "scratch" / "config.yaml") as f:
        assert yaml.safe_load(f)["training"]["precise_bn"] is True  # the run records what it did


def test_flag_mistakes_a_newcomer_makes_are_named(tmp_path, capsys):
    data = _pairs(tmp_path / "d", 4)
    base = ["train", "--model", "unet", "--data", str(data), "--out", str(tmp_path / "out")]
    assert main([*base, "--set", "training.epochs"]) == 2
    assert "--set 'training.epochs': expected KEY.SUB=VALUE" in capsys.readouterr().err
    assert main([*base, "--holdout", "0.6"]) == 2
    assert "--holdout must be a fraction in (0, 0.5)" in capsys.readouterr().err
    assert main([*base, "--strategy", "frozen_bottleneck"]) == 2
    err = capsys.readouterr().err
    assert "unet has no pretrained encoder: train every layer (--strategy all)" in err
    with pytest.raises(SystemExit):
        main([*base, "--strategy", "Decoder"])
    assert "(did you mean 'decoder'?)" in capsys.readouterr().err
    assert main(["experiment", "wang2023_fetal_head", "--quick", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "training.epochs must be a whole number >= 1" in capsys.readouterr().err
    ecssd = tmp_path / "ecssd"
    (ecssd / "images").mkdir(parents=True)
    (ecssd / "ground_truth_mask").mkdir()
    assert main(["train", "--model", "unet", "--data", str(ecssd)]) == 2
    assert "it has the folders of layout ecssd (--layout ecssd)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_start_line_says_what_the_run_does(tmp_path, capsys):
    data = _pairs(tmp_path / "d", 8, rgb=True)
    assert main(["train", "--model", "unet", "--data", str(data), "--image-size", "32,32", "--epochs", "1",
                 "--set", "model.filters=[4,8]", "--set", "data.channels=1", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "from random weights; channels 1 (as asked)" in out
    with open(tmp_path / "out" / "train" / "all" / "config.yaml") as f:
        assert yaml.safe_load(f)["data"]["channels"] == 1


def test_evaluate_split_all_and_a_linked_data_folder(rgb_run, tmp_path, capsys):
    data, run, _ = rgb_run
    assert main(["evaluate", str(run / "model.keras"), "--data", str(data), "--split", "all"]) == 0
    assert "all 20 images (--split all: training cases included)" in capsys.readouterr().out
    os.symlink(data, tmp_path / "link")
    assert main(["evaluate", str(run / "model.keras"), "--data", str(tmp_path / "link")]) == 0
    assert "the 4 test cases of the run's split" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--data", str(data)]) == 2
    assert f"is a run folder; did you mean {run / 'model.keras'}?" in capsys.readouterr().err
