"""What tlunet refuses, and how: configs, run folders, weights and the CLI. Every case asserts the
exact error type and that the message names the file, key or folder and the problem. (Bad data
files — HC18 CSVs, masks, images, predict folders, the exported endpoint — are in
tests/test_bad_inputs_data.py.)"""

import copy
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import yaml

import tlunet
from tlunet.cli import main
from tlunet.resources import ConfigError
from tlunet.runners import config_from_dict, run_experiment
from tlunet.runners.results import FolderInUse, lock_folder, release_folder

TINY = {
    "name": "tiny",
    "data": {"kind": "lung_us_phantom", "n": 6, "phantom_size": [32, 32], "image_size": [32, 32],
             "split": [0.5, 0.25, 0.25]},
    "model": {"name": "unet", "filters": [4, 8, 16, 32, 64]},
    "training": {"epochs": 1, "batch_size": 4},
    "runs": [{"name": "all", "strategy": "all"}],
}


def _cfg(**changes):
    raw = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            raw[section][sub] = value
        elif value is None:
            raw.pop(section)
        else:
            raw[section] = value
    return raw


# ------------------------------------------------------------------------------ configs
BAD_CONFIGS = [
    ("name escapes --out", {"name": "../../escaped"}, r"name '../../escaped' must be a plain folder name"),
    ("absolute name", {"name": "/tmp/escaped"}, r"name '/tmp/escaped' must be a plain folder name"),
    ("name with a separator", {"name": "a/b"}, r"name 'a/b' must be a plain folder name"),
    ("run name escapes", {"runs": [{"name": "..", "strategy": "all"}]}, r"run name '\.\.' must be a plain folder"),
    ("run name with a separator", {"runs": [{"name": "x/../../y"}]}, r"run name 'x/../../y' must be a plain"),
    ("stage name escapes", {"runs": [{"name": "all", "stages": [{"strategy": "all", "name": "../../x"}]}]},
     r"run 'all' stage name '../../x' must be a plain folder name"),
    ("absolute stage name", {"runs": [{"name": "all", "stages": [{"strategy": "all", "name": "/tmp/victim"}]}]},
     r"stage name '/tmp/victim' must be a plain folder name"),
    ("repeated run names", {"runs": [{"name": "a"}, {"name": "a"}]}, r"run names must differ.*\['a'\]"),
    ("runs as a mapping", {"runs": {"all": {"strategy": "all"}}}, r"`runs` must be a non-empty list.*got dict"),
    ("no runs", {"runs": []}, r"`runs` must be a non-empty list"),
    ("epochs 0", {"training__epochs": 0}, r"training.epochs must be a whole number >= 1. Received: epochs=0"),
    ("epochs negative", {"training__epochs": -3}, r"training.epochs must be a whole number >= 1"),
    ("epochs not whole", {"training__epochs": 1.5}, r"training.epochs must be a whole number >= 1. Received: epochs=1.5"),
    ("epochs as text", {"training__epochs": "10"}, r"training.epochs must be a whole number >= 1. Received: epochs='10'"),
    ("batch size 0", {"training__batch_size": 0}, r"training.batch_size must be a whole number >= 1"),
    ("learning rate 0", {"training__learning_rate": 0}, r"training.learning_rate must be a finite number > 0"),
    ("learning rate inf", {"training__learning_rate": float("inf")},
     r"training.learning_rate must be a finite number > 0. Received: learning_rate=inf"),
    ("learning rate nan", {"training__learning_rate": float("nan")},
     r"training.learning_rate must be a finite number > 0. Received: learning_rate=nan"),
    ("stage learning rate inf", {"runs": [{"name": "a", "stages": [{"strategy": "all", "learning_rate": float("inf")}]}]},
     r"run 'a' stage.learning_rate must be a finite number > 0"),
    ("cosine min_lr inf", {"training__lr_schedule": {"name": "cosine", "min_lr": float("inf")}},
     r"training.lr_schedule: lr_schedule 'cosine': min_lr must be a finite number >= 0. Received: min_lr=inf"),
    ("split not summing to 1", {"data__split": [0.5, 0.5, 0.5]}, r"data.split must be 3 fractions >= 0 summing to 1"),
    ("pairs without a root", {"data": {"kind": "pairs", "image_size": [32, 32]}},
     r"data.root is missing: kind pairs reads a folder"),
    ("unknown key", {"trainig": {}}, r"unknown keys \['trainig'\]"),
    ("unknown tta", {"evaluation": {"tta": "rotate"}}, r"evaluation.tta must be one of \[None, 'flip'\]"),
    ("threshold 1", {"evaluation": {"threshold": 1}}, r"evaluation.threshold must be a number in \(0, 1\)"),
    ("largest component not a flag", {"evaluation": {"largest_component": "yes"}},
     r"evaluation.largest_component must be true or false. Received: 'yes'"),
    ("largest component of a multi-class model", {"evaluation": {"largest_component": True}, "model__classes": 3},
     r"evaluation.largest_component keeps one region of a one-class model; run 'all' has model.classes 3"),
    ("largest component of a run's multi-class model",
     {"evaluation": {"largest_component": True}, "runs": [{"name": "a", "strategy": "all"},
                                                          {"name": "b", "strategy": "all", "model": {"classes": 2}}]},
     r"run 'b' has model.classes 2"),
    ("unknown lr schedule", {"training__lr_schedule": "step"}, r"training.lr_schedule: lr_schedule must be one of"),
    ("bad cosine option", {"training__lr_schedule": {"name": "cosine", "warmup_epochs": 1.5}},
     r"training.lr_schedule: lr_schedule 'cosine': warmup_epochs must be a whole number >= 0"),
    ("tensorboard not a flag", {"training__tensorboard": "yes"}, r"training.tensorboard must be true or false"),
    ("gradient accumulation 0", {"training__gradient_accumulation": 0},
     r"training.gradient_accumulation must be a whole number >= 1"),
    ("precise_bn not a bool", {"training__precise_bn": "yes"}, r"training.precise_bn must be true or false"),
    ("precise_bn with frozen BatchNorm", {"training": {"epochs": 1, "precise_bn": True, "batchnorm": "freeze"}},
     r"training.precise_bn recomputes the statistics of BatchNorm layers that train; with batchnorm: freeze none"),
    ("precise_bn with distribute", {"training": {"epochs": 1, "precise_bn": True, "distribute": "mirrored"}},
     r"training.precise_bn recomputes BatchNorm statistics in one process; it is not supported with distribute"),
    ("unknown distribution", {"training__distribute": "tpu"}, r"training.distribute must be one of \[None, 'mirrored'"),
    ("seeds not a list", {"sweep": {"seeds": 3}}, r"sweep.seeds must be a list of distinct whole numbers"),
    ("image size the model cannot take", {"data__image_size": [32, 40]},
     r"data.image_size \[32, 40\] does not fit run 'all': unet needs spatial sizes that are multiples of 16"),
]


@pytest.mark.parametrize("raw,pattern", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_configs_are_refused_naming_the_file_and_key(raw, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        config_from_dict(_cfg(**raw), "/configs/bad.yaml")
    assert str(info.value).startswith("/configs/bad.yaml: ")


def test_a_config_that_is_a_list_names_the_file(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- name: a\n- name: b\n")
    assert main(["experiment", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: an experiment config is a mapping of keys" in err and "holds a list" in err
    assert "Traceback" not in err


def test_a_split_that_leaves_no_test_cases_stops_before_training(tmp_path):
    cfg = config_from_dict(_cfg(data__split=[0.5, 0.5, 0.0]), str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=r"tiny: data.split \[0.5, 0.5, 0.0\] of 6 subjects leaves no test cases"):
        run_experiment(cfg, out_dir=str(tmp_path / "out"), log=lambda *a: None)
    assert not (tmp_path / "out" / "tiny" / "all").exists()  # no run folder was started


def test_a_split_that_rounds_validation_away_stops_before_training(tmp_path):
    cfg = config_from_dict(_cfg(data__n=3, data__split=[0.6, 0.1, 0.3]), str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=r"of 3 subjects leaves no validation cases"):
        run_experiment(cfg, out_dir=str(tmp_path / "out"), log=lambda *a: None)


def test_cli_name_that_escapes_out_writes_nothing_outside(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    code = main(["train", "--model", "unet", "--data", str(data), "--out", "A/out", "--name", "../../escaped"])
    assert code == 2
    err = capsys.readouterr().err
    assert "name '../../escaped' must be a plain folder name" in err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "A").exists()


# -------------------------------------------------------------------------- run folders
@pytest.mark.slow
def test_rerunning_a_finished_run_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / "out")
    run_experiment(config_from_dict(_cfg(), str(tmp_path / "c.yaml")), out_dir=out, log=lambda *a: None)
    changed = config_from_dict(_cfg(training__epochs=2), str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=r"out/tiny/all holds a finished run made with other settings "
                                          r"\(training.epochs: 1 -> 2\)"):
        run_experiment(changed, out_dir=out, log=lambda *a: None)
    again = run_experiment(config_from_dict(_cfg(), str(tmp_path / "c.yaml")), out_dir=out, log=lambda *a: None)
    assert again[0]["run"] == "all"  # the same settings: the finished run is reused
    logged = []
    more = _cfg(runs=[{"name": "all", "strategy": "all"}, {"name": "frozen", "strategy": {"frozen": ["encoder"]}}],
                training__tensorboard=True)
    rows = run_experiment(config_from_dict(more, str(tmp_path / "other" / "c.yaml")), out_dir=out, log=logged.append)
    assert [r["run"] for r in rows] == ["all", "frozen"]  # a run added, TensorBoard on: the finished one is kept
    assert any("all: done earlier, skipped" in line for line in logged)
    # a run made before a setting existed: the missing key reads as its default, so the run is kept,
    # and a config that sets it otherwise is refused, naming the default the run had
    saved = tmp_path / "out" / "tiny" / "all" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["training"]["gradient_accumulation"], old["evaluation"]["largest_component"]
    saved.write_text(yaml.safe_dump(old))
    logged = []
    run_experiment(config_from_dict(_cfg(), str(tmp_path / "c.yaml")), out_dir=out, log=logged.append)
    assert any("all: done earlier, skipped" in line for line in logged)
    with pytest.raises(ConfigError, match=r"\(evaluation.largest_component: False -> True\)"):
        run_experiment(config_from_dict(_cfg(evaluation={"largest_component": True}), str(tmp_path / "c.yaml")),
                       out_dir=out, log=lambda *a: None)


def test_a_run_killed_before_any_epoch_was_saved_may_change_settings(tmp_path):
    """Nothing to resume yet (no epoch, no stage saved): a smaller batch after an out-of-memory kill runs."""
    out = tmp_path / "out"
    (out / "tiny" / "all").mkdir(parents=True)
    run_experiment(config_from_dict(_cfg(training__batch_size=8), str(tmp_path / "c.yaml")), out_dir=str(out),
                   log=lambda *a: None)  # writes config.yaml; pretend it was killed in its first epoch:
    for name in ("done.json", "summary.md"):
        (out / "tiny" / "all" / name).unlink()
    import shutil
    shutil.rmtree(out / "tiny" / "all" / "stage0_all")
    rows = run_experiment(config_from_dict(_cfg(training__batch_size=2), str(tmp_path / "c.yaml")), out_dir=str(out),
                          log=lambda *a: None)
    assert rows[0]["run"] == "all"


@pytest.mark.slow
def test_a_source_model_made_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / "out")
    raw = _cfg(pretrain={"training": {"epochs": 1}}, runs=[{"name": "ft", "init": "pretrain", "strategy": "all"}])
    run_experiment(config_from_dict(raw, str(tmp_path / "c.yaml")), out_dir=out, log=lambda *a: None)
    import shutil
    shutil.rmtree(tmp_path / "out" / "tiny" / "ft")  # as the run-folder message says
    # a source made before a setting existed: the key it lacks reads as its default, and it is reused
    meta = tmp_path / "out" / "tiny" / "pretrain" / "source.json"
    info = json.loads(meta.read_text())
    del info["settings"]["training"]["gradient_accumulation"]
    meta.write_text(json.dumps(info))
    made = (tmp_path / "out" / "tiny" / "pretrain" / "source.keras").stat().st_mtime_ns
    run_experiment(config_from_dict(raw, str(tmp_path / "c.yaml")), out_dir=out, log=lambda *a: None)
    assert (tmp_path / "out" / "tiny" / "pretrain" / "source.keras").stat().st_mtime_ns == made
    assert "gradient_accumulation" not in json.loads(meta.read_text())["settings"]["training"]
    shutil.rmtree(tmp_path / "out" / "tiny" / "ft")
    raw["pretrain"]["training"]["epochs"] = 2
    with pytest.raises(ConfigError, match=r"pretrain holds a source model made with other settings "
                                          r"\(training.epochs: 1 -> 2\)"):
        run_experiment(config_from_dict(raw, str(tmp_path / "c.yaml")), out_dir=out, log=lambda *a: None)


LOCK_HOLDER = textwrap.dedent('''
    import sys, time
    from tlunet.runners.results import lock_folder
    lock_folder(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
''')


def test_a_second_process_writing_into_the_same_run_folder_is_refused(tmp_path, capsys):
    """A real second process holds the folder; the CLI run into it stops before any work."""
    folder = tmp_path / "out" / "tiny"
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = tmp_path / "tiny.yaml"
        config.write_text(json.dumps(TINY))  # JSON is YAML
        assert main(["experiment", str(config), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"run folder {folder} is in use by pid {holder.pid}" in err
        assert not (folder / "all").exists()  # nothing was started
    finally:
        holder.kill()
        holder.wait()
    lock_folder(folder)  # its process is gone: the lock is free again
    release_folder(folder)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """The lock is the operating system's: a holder killed with SIGKILL releases it, whatever its
    lock file still says."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(FolderInUse, match=rf"in use by pid {holder.pid}"):
        lock_folder(tmp_path)
    holder.kill()
    holder.wait()
    assert json.loads((tmp_path / ".tlunet.lock").read_text())["pid"] == holder.pid  # its note is still there
    lock_folder(tmp_path)
    assert json.loads((tmp_path / ".tlunet.lock").read_text())["pid"] == os.getpid()
    release_folder(tmp_path)


LOCK_RACE = textwrap.dedent('''
    import sys, time
    from tlunet.runners.results import FolderInUse, lock_folder
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    try:
        lock_folder(sys.argv[1])
        print("got", flush=True)
        time.sleep(3)
    except FolderInUse:
        print("refused", flush=True)
''')


def test_processes_racing_for_a_folder_get_one_lock(tmp_path):
    import time
    start = time.time() + 4  # the interpreters start first, then all ask at once
    racers = [subprocess.Popen([sys.executable, "-c", LOCK_RACE, str(tmp_path), str(start)], stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert answers == ["got", "refused", "refused", "refused"]


def test_an_unwritable_out_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "readonly"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as a read-only mount would
        real = os.makedirs

        def makedirs(path, *args, **kwargs):
            if str(path).startswith(str(out)):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        monkeypatch.setattr(os, "makedirs", makedirs)
    else:
        out.chmod(0o555)
    assert main(["experiment", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tlunet experiment: error: --out {out}: cannot write there")
    assert len(err.splitlines()) == 1


# -------------------------------------------------------------------------------- weights
def test_a_transfer_that_copies_nothing_is_an_error_unless_allowed():
    src = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")], name="src")
    dst = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="b")], name="dst")
    with pytest.raises(ValueError, match=r"from 'src' to 'dst' copied no layer.*destination \['b'\].*source \['a'\]"):
        tlunet.transfer_weights(src, dst)
    assert tlunet.transfer_weights(src, dst, allow_empty=True).copied == []


def test_a_diverged_source_model_is_refused_naming_the_layer():
    src = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")], name="src")
    dst = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")], name="dst")
    src.get_layer("a").set_weights([np.full((4, 3), np.nan, "float32"), np.zeros(3, "float32")])
    with pytest.raises(ValueError, match=r"source layer 'a' of 'src' holds NaN or inf values"):
        tlunet.transfer_weights(src, dst)


@pytest.mark.slow
def test_an_encoder_weights_file_holding_nan_is_refused(tmp_path):
    app = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    app.layers[1].set_weights([np.full(w.shape, np.nan, "float32") for w in app.layers[1].get_weights()])
    path = tmp_path / "nan.weights.h5"
    app.save_weights(path)
    with pytest.raises(ValueError, match=rf"encoder_weights file '{path}' .*holds NaN or inf values"):
        tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 1), encoder_weights=str(path))


def test_encoder_weights_pointing_at_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match=rf"encoder_weights '{tmp_path}' is a directory; give the weights file"):
        tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 1), encoder_weights=str(tmp_path))
    from tlunet.models.resnet3d import read_state_dict
    with pytest.raises(ValueError, match=rf"r3d_18 weights '{tmp_path}' is a directory"):
        read_state_dict(tmp_path)


def test_an_r3d18_npz_holding_nan_is_refused(tmp_path):
    from tlunet.models.resnet3d import read_state_dict
    path = tmp_path / "r3d.npz"
    np.savez(path, **{"stem.0.weight": np.array([np.nan], "float32"), "fc.bias": np.zeros(2, "float32")})
    with pytest.raises(ValueError, match=r"r3d.npz' holds NaN or inf values in 1 arrays, e.g. \['stem.0.weight'\]"):
        read_state_dict(path)


def test_a_fold_run_made_with_another_number_of_folds_is_not_reused(tmp_path):
    """`-fold0` of 3 folds tests on other cases than `-fold0` of 5: refused, not silently reused;
    adding fractions or seeds (which name their own runs) is not a change."""
    from tlunet.runners.results import changed_settings, write_config
    cfg = {"name": "x", "data": {"split": [0.6, 0.2, 0.2]}, "sweep": {"folds": 5, "fractions": [1.0], "seeds": None}}
    run = {"name": "scratch"}
    write_config(str(tmp_path), cfg, run=run, fold=0)
    assert changed_settings(str(tmp_path), {**cfg, "sweep": {**cfg["sweep"], "folds": 3}}, run) == ["sweep.folds: 5 -> 3"]
    assert changed_settings(str(tmp_path), {**cfg, "sweep": {"folds": 5, "fractions": [0.5, 1.0], "seeds": [0, 1]}},
                            run) == []


# ------------------------------------------------------------------- "did you mean ...?"
SUGGESTED_CONFIGS = [
    ("misspelt top-level key", {"trainig": {}}, r"unknown keys \['trainig'\] \(did you mean 'training'\?\); valid: \["),
    ("misspelt training key", {"training__lerning_rate": 1e-3},
     r"unknown training keys \['lerning_rate'\] \(did you mean 'learning_rate'\?\); valid: \[.*'learning_rate'"),
    ("two misspelt keys", {"training__epocs": 2, "training__bach_size": 4},
     r"unknown training keys \['bach_size', 'epocs'\] \(did you mean 'batch_size' for 'bach_size', "
     r"'epochs' for 'epocs'\?\); valid:"),
    ("misspelt model option", {"model__filtres": [4, 8, 16, 32, 64]},
     r"unknown model keys \['filtres'\] \(did you mean 'filters'\?\) for unet; valid:"),
    ("misspelt model name", {"model__name": "mobilenet_unet"},
     r"model: Unknown model 'mobilenet_unet' \(did you mean 'mobilenetv2_unet'\?\)\. Valid models: \["),
    ("misspelt strategy", {"runs": [{"name": "a", "strategy": "frozen_encoders"}]},
     r"Unknown strategy 'frozen_encoders' \(did you mean 'frozen_encoder'\?\)\. Presets: \["),
]


@pytest.mark.parametrize("raw,pattern", [c[1:] for c in SUGGESTED_CONFIGS], ids=[c[0] for c in SUGGESTED_CONFIGS])
def test_misspelt_config_names_get_the_nearest_valid_spelling(raw, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        config_from_dict(_cfg(**raw), "/configs/bad.yaml")
    assert str(info.value).startswith("/configs/bad.yaml: ")


@pytest.mark.parametrize("raw,pattern", [
    ({"colour": "red"}, r"unknown keys \['colour'\]; valid: \["),
    ({"training__verbosity": 2}, r"unknown training keys \['verbosity'\]; valid: \["),
    ({"model__name": "transformer"}, r"Unknown model 'transformer'\. Valid models: \["),
    ({"runs": [{"name": "a", "strategy": "everything"}]}, r"Unknown strategy 'everything'\. Presets: \["),
])
def test_config_names_with_no_close_spelling_get_no_suggestion(raw, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        config_from_dict(_cfg(**raw), "/configs/bad.yaml")
    assert "did you mean" not in str(info.value)


def _message(call, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_misspelt_names_in_python_get_the_nearest_valid_spelling():
    from tlunet.data.augment import get_augment_config
    from tlunet.finetune import get_strategy
    from tlunet.losses import get_loss
    from tlunet.resources import find_config, sample_path

    cases = [  # (message, suggestion, the message's own list of valid choices, still there)
        (_message(tlunet.get_model_info, "mobilenet_unet"), "'mobilenetv2_unet'", "Valid models: ["),
        (_message(tlunet.build_model, "mobilenet_unet"), "'mobilenetv2_unet'", "Valid models: ["),
        (_message(tlunet.get_model_info, "UNet"), "'unet'", "Valid models: ["),  # case alone
        (_message(tlunet.build_model, "unet", filtres=[4]), "'filters'", "Valid options: ["),
        (_message(get_strategy, "decoder-only"), "'decoder'", "Presets: ["),
        (_message(get_strategy, "d-4"), "'D-4'", "Presets: ["),
        (_message(get_loss, "bce_dcie"), "'bce_dice'", "tlunet losses: ['dice', 'bce_dice'"),
        (_message(get_loss, "binary_crossentopy"), "'binary_crossentropy'", "or a Keras loss name"),
        (_message(get_augment_config, "ultrasond"), "'ultrasound'", "Valid: ['none'"),
        (_message(find_config, "wang2023_fetal_haed"), "'wang2023_fetal_head'", "nor one of ["),
        (_message(sample_path, "hc18_smal"), "'hc18_small'", "tlunet ships ['hc18_small']"),
    ]
    for message, suggestion, valid in cases:
        assert f"(did you mean {suggestion}?)" in message and valid in message, message
    assert "(did you mean 'rotation' for 'rotaton', 'zoom' for 'zom'?). Valid: [" in \
        _message(get_augment_config, {"rotaton": 3, "zom": 0.1, "colour": 1})


def test_names_in_python_with_no_close_spelling_get_no_suggestion():
    from tlunet.data.augment import get_augment_config
    from tlunet.finetune import get_strategy
    from tlunet.losses import get_loss
    from tlunet.resources import find_config

    for message in (_message(tlunet.get_model_info, "transformer"), _message(tlunet.build_model, "unet", colour=1),
                    _message(get_strategy, "everything"), _message(get_loss, "hausdorff"),
                    _message(get_augment_config, "heavy"), _message(get_augment_config, {"colour": 1}),
                    _message(find_config, "fetal"),
                    _message(find_config, "wang2023_fetal_haed.yaml")):  # a missing file, not a misspelt name
        assert "did you mean" not in message, message


def test_cli_misspelt_experiment_gets_the_nearest_name(capsys):
    assert main(["experiment", "wang2023_fetal_haed", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "'wang2023_fetal_haed' (did you mean 'wang2023_fetal_head'?)" in err
    assert "Traceback" not in err


def test_cli_data_that_is_the_images_folder_points_at_its_parent(tmp_path, capsys):
    """The issue's case: `--data my_data/images` names the folder given, the layout and the parent."""
    data = tmp_path / "my_data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    code = main(["train", "--model", "unet", "--data", str(data / "images"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{data / 'images'}: no images/ or masks/ folder; expected {data / 'images' / 'images'}/ and " in err
    assert f"with matching file names (layout generic); did you mean the folder {data}?" in err
    assert "Traceback" not in err
