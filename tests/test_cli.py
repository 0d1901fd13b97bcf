"""The `tlunet` command line: models and strategies."""

import csv

import pytest

import tlunet
from tlunet.cli import main


def test_models_lists_the_zoo_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == set(tlunet.list_models())
    # the papers' counts at their reference shapes, checked independently in tests/models
    assert {name: cols[2] for name, cols in rows.items()} == {
        "unet": "31,031,745", "vgg16_unet": "25,854,657", "mobilenetv2_unet": "6,665,041",
        "resnet18_3d_unet": "42,533,601", "unet3d": "16,549,217", "hybrid_unet3d": "25,188,297"}


def test_models_with_a_shape_some_cannot_take(capsys):
    assert main(["models", "--input-shape", "48,48,1"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "not buildable" in rows["mobilenetv2_unet"] and "multiples of 32" in rows["mobilenetv2_unet"]
    assert "not buildable" not in rows["unet"]


def test_strategies_writes_markdown_and_csv(tmp_path, capsys):
    stem = tmp_path / "out" / "wang"
    assert main(["strategies", "mobilenetv2_unet", "--reference", "unet", "--out", str(stem)]) == 0
    assert "| decoder | 4,405,073 |" in capsys.readouterr().out
    with open(f"{stem}.csv") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert rows["D-4"]["trainable_params"] == "6976"
    assert f"{float(rows['decoder']['fewer_than_reference_pct']):.1f}" == "85.8"


def test_errors_are_one_line_not_tracebacks(capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse checks the name against the catalog
        main(["strategies", "resnet_unet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet_unet'" in err and "mobilenetv2_unet" in err
    assert "Traceback" not in err
    assert main(["strategies", "mobilenetv2_unet", "--strategies", "frozen_bottleneck"]) == 2
    assert "matches no layer" in capsys.readouterr().err


def test_evaluate_a_model_of_any_input_size_needs_a_size(tmp_path, capsys):
    from PIL import Image

    from tlunet.data.phantoms import fetal_head
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(3):
        head = fetal_head((40, 48), seed=i)
        Image.fromarray(head["image"]).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray(head["mask"] * 255).save(tmp_path / "data" / "masks" / f"{i}.png")
    model = tlunet.build_model("unet", input_shape=(None, None, 1), filters=(4, 8, 16))
    model.save(tmp_path / "free.keras")
    assert main(["evaluate", str(tmp_path / "free.keras"), "--data", str(tmp_path / "data")]) == 2
    assert "accepts any input size; pass --image-size H,W" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "free.keras"), "--data", str(tmp_path / "data"), "--image-size", "32,32"]) == 0
    assert "all 3 images at 32x32" in capsys.readouterr().out
