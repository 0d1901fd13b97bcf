"""The `tlunet` command line: models and strategies."""

import csv

import tlunet
from tlunet.cli import main


def test_models_lists_the_zoo_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == set(tlunet.list_models())
    for name, cols in rows.items():
        model = tlunet.build_model(name)  # each at its paper's reference shape
        assert cols[2] == f"{model.count_params():,}"
    assert rows["unet"][2] == "31,031,745"


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
    assert main(["strategies", "resnet_unet"]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'resnet_unet'" in err and "mobilenetv2_unet" in err
    assert "Traceback" not in err
    assert main(["strategies", "mobilenetv2_unet", "--strategies", "frozen_bottleneck"]) == 2
    assert "matches no layer" in capsys.readouterr().err
