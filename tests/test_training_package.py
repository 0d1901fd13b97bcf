"""tlunet.training: where a run resumes from is an argument of `fit`/`run_stages`, not process state,
and `tlunet.train` still gives every name it gave."""

import json

import keras
import numpy as np
import pytest

import tlunet
import tlunet.files
import tlunet.train
import tlunet.training
from tlunet.data import make_dataset
from tlunet.training import compile_model, fit, read_history, run_stages

STEPS = 2  # 8 images, batch 4


def _data():
    rng = np.random.default_rng(0)
    x = (rng.random((8, 32, 32, 1)) * 255).astype("uint8")
    return make_dataset(x, (x[..., 0] > 127).astype("uint8"), batch_size=4, augment=None, shuffle=False)


def _model(seed):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return compile_model(tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16)), learning_rate=1e-2)


def _fit(run_dir, epochs, seed=0, **kwargs):
    model = _model(seed)
    history = fit(model, _data(), run_dir=str(run_dir), epochs=epochs, verbose=0, **kwargs)
    return model, history


@pytest.fixture(scope="module")
def chiefs(tmp_path_factory):
    """Two chiefs' run folders: `a/run` stopped after 1 epoch, `b/run` after 2, from different seeds."""
    root = tmp_path_factory.mktemp("chiefs")
    losses = {}
    for name, epochs, seed in (("a", 1, 1), ("b", 2, 2)):
        _, history = _fit(root / name / "run", epochs, seed=seed)
        losses[name] = history["loss"]
    assert losses["a"][0] != losses["b"][0]
    return root, losses


def _state(run_dir):
    return json.loads((run_dir / "backup" / "state.json").read_text())


def test_two_fits_with_different_backup_dirs_resume_each_from_its_own(chiefs, tmp_path):
    root, losses = chiefs
    before = {name: _state(root / name / "run") for name in "ab"}
    model_a, history_a = _fit(tmp_path / "worker_a", 3, backup_dir=str(root / "a" / "run"))
    model_b, history_b = _fit(tmp_path / "worker_b", 3, backup_dir=str(root / "b" / "run"))
    assert history_a["epoch"] == history_b["epoch"] == [0, 1, 2]
    assert history_a["loss"][:1] == losses["a"]  # the epochs done came from a's folder ...
    assert history_b["loss"][:2] == losses["b"]  # ... and b's from b's, not a's
    assert int(model_a.optimizer.iterations.numpy()) == int(model_b.optimizer.iterations.numpy()) == 3 * STEPS
    # a fit after them without backup_dir reads its own (new) folder: nothing of either carries over
    model_c, history_c = _fit(tmp_path / "fresh", 1)
    assert history_c["epoch"] == [0] and int(model_c.optimizer.iterations.numpy()) == STEPS
    # the workers wrote their own folders; the chiefs' are as they were
    assert _state(tmp_path / "worker_a")["epoch"] == _state(tmp_path / "worker_b")["epoch"] == 3
    assert {name: _state(root / name / "run") for name in "ab"} == before


def test_run_stages_resumes_each_stage_from_the_same_stage_under_backup_dir(tmp_path):
    stages = [{"strategy": "all", "epochs": 2, "learning_rate": 1e-2}]

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stages(_model(0), stages, _data(), run_dir=str(tmp_path / "chief"), verbose=0, callbacks=[Stop()])
    chief = read_history(tmp_path / "chief" / "stage0_all" / "history.csv")
    assert chief["epoch"] == [0]
    done = run_stages(_model(3), stages, _data(), run_dir=str(tmp_path / "worker"), verbose=0,
                      backup_dir=str(tmp_path / "chief"))
    assert done[0]["history"]["epoch"] == [0, 1]
    assert done[0]["history"]["loss"][:1] == chief["loss"]


def test_the_compatibility_module_gives_the_same_objects():
    for name in tlunet.training.__all__:
        assert getattr(tlunet.train, name) is getattr(tlunet.training, name), name
    assert tlunet.train.atomic_write is tlunet.files.atomic_write


def test_precise_bn_leaves_no_reference_that_keeps_a_model_alive():
    """Its traced forward pass is cached per model; a sweep of many runs must not keep every model."""
    import gc
    import weakref

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(inputs)))
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    tlunet.training.precise_bn(model, [(x, x)])
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None, "precise_bn's cached forward pass keeps the model alive"
