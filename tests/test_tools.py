"""The maintainers' tools in tools/, run as a user runs them: a subprocess on finished run folders."""

import os
import re
import subprocess
import sys

import pytest

from tlunet.runners import config_from_dict, run_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_run(tmp_path, precise):
    raw = {"name": "tiny", "data": {"kind": "lung_us_phantom", "n": 12, "phantom_size": [32, 32],
                                    "image_size": [32, 32], "split": [0.5, 0.25, 0.25]},
           "model": {"name": "unet", "filters": [4, 8, 16, 32, 64], "batchnorm": True},
           "training": {"epochs": 6, "batch_size": 2, "precise_bn": precise},
           "runs": [{"name": "all", "strategy": "all"}]}
    out = tmp_path / f"out_{precise}"
    row = run_experiment(config_from_dict(raw, str(tmp_path / "c.yaml")), out_dir=str(out), log=lambda *a: None)[0]
    return out / "tiny" / "all", row


def _tool(*args):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "precise_bn_runs.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"test Dice ([\d.]+) with its saved BatchNorm statistics, ([\d.]+) recomputed", done.stdout)
    assert found, done.stdout
    return float(found.group(1)), float(found.group(2))


@pytest.mark.slow
def test_precise_bn_runs_rebuilds_the_runs_split_and_recomputes_its_statistics(tmp_path):
    run, row = _tiny_run(tmp_path, precise=False)
    saved, recomputed = _tool(run, "--out", tmp_path / "recalibrated")
    assert saved == pytest.approx(row["dice"], abs=5e-4)  # the run's own test set, scored as the run did
    assert abs(recomputed - saved) > 0.01  # 18 updates leave Keras' averages far from the weights' statistics
    import keras

    import tlunet  # noqa: F401 - registers tlunet's objects
    keras.models.load_model(tmp_path / "recalibrated" / "all" / "model.keras")
    # a run trained with training.precise_bn already holds those statistics
    run, row = _tiny_run(tmp_path, precise=True)
    saved, recomputed = _tool(run)
    assert saved == pytest.approx(row["dice"], abs=5e-4) and recomputed == pytest.approx(saved, abs=2e-3)


def test_precise_bn_runs_refuses_a_folder_that_is_not_a_finished_run(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "precise_bn_runs.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"{tmp_path}: no config.yaml" in done.stderr


def test_precise_bn_runs_refuses_a_run_of_several_stages(tmp_path):
    """Recomputing after training reaches only the last stage's layers; such a run is refused, naming it."""
    import yaml

    run = tmp_path / "vunet"
    run.mkdir()
    stages = [{"strategy": "frozen_encoder", "epochs": 1}, {"strategy": "all", "epochs": 1}]
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "image", "data": {"image_size": [32, 32]},
                                                     "run": {"name": "vunet", "stages": stages}}))
    (run / "model.keras").write_bytes(b"")
    (run / "done.json").write_text("{}")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "precise_bn_runs.py"), str(run)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"{run}: a run of several stages" in done.stderr, done.stderr


def test_tta_val_hc18_refuses_a_run_that_is_not_on_hc18(tmp_path):
    import yaml

    run = tmp_path / "covid"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "image", "data": {"kind": "pairs", "image_size": [32, 32]}}))
    (run / "model.keras").write_bytes(b"")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "tta_val_hc18.py"), str(run), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"{run}/config.yaml: not a run on HC18 (data.kind: hc18)" in done.stderr, done.stderr


def test_tta_val_hc18_names_a_folder_that_is_not_hc18(tmp_path):
    import yaml

    run = tmp_path / "scratch"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "image", "seed": 0, "data": {
        "kind": "hc18", "image_size": [32, 48], "channels": 1, "split": [0.7, 0.15, 0.15]}}))
    (run / "model.keras").write_bytes(b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "tta_val_hc18.py"), str(run), str(empty)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(f"{empty}: no training_set/ folder"), \
        done.stderr
