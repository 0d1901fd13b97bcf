"""tlunet/_keras_compat.py patches Keras internals for distributed training, on the Keras versions
each work-around is for. These tests fail when an installed Keras changes a patched function (re-check
that work-around before widening its versions and setup.py's cap), and check the version gate both
ways. The work-arounds themselves run in tests/test_distributed.py and
tests/test_reliability_distributed.py."""

import hashlib
import importlib
import inspect
import re
from pathlib import Path

import keras
import pytest
from keras.src.backend.tensorflow import trainer as keras_trainer

from tlunet import _keras_compat as compat

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def _resolve(dotted):
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


SOURCES = [(name, dotted, digest) for name, patch in compat.PATCHES.items()
           for dotted, digest in patch["sources"].items()]


@pytest.mark.parametrize("name,dotted,digest", SOURCES, ids=[d.rsplit(".", 2)[-1] for _, d, _ in SOURCES])
def test_patched_keras_functions_are_the_ones_the_work_arounds_were_written_for(name, dotted, digest):
    source = inspect.getsource(_resolve(dotted))
    found = hashlib.sha256(source.encode()).hexdigest()
    assert found == digest, (
        f"The installed Keras {keras.__version__} has another {dotted} than the Keras "
        f"{compat.TESTED_KERAS} that tlunet's {name!r} work-around (tlunet/_keras_compat.py, for "
        f"keras{compat._spec(name)}: {compat.PATCHES[name]['why']}) replaces, wraps or calls. Read the new "
        "source, check whether the work-around is still needed and still right (tests/test_distributed.py), "
        f"then update its versions and hash ({found}) in PATCHES and the cap in setup.py.")


def test_setup_caps_keras_at_the_tested_version():
    caps = re.findall(r'"keras>=[\d.]+,<(\d+)\.(\d+)"', SETUP.read_text(encoding="utf-8"))
    assert len(caps) == 1, "setup.py's install_requires should cap keras as 'keras>=A.B,<C.D'"
    below = tuple(map(int, caps[0]))
    tested = compat._version_tuple(compat.TESTED_KERAS)
    assert tested < below <= (tested[0], tested[1] + 1), (
        f"setup.py caps keras below {below}, but the newest Keras tested is {compat.TESTED_KERAS}")
    for name, patch in compat.PATCHES.items():
        assert patch["keras"][1] <= below, f"{name} claims Keras versions setup.py does not allow"


@pytest.mark.parametrize("version,expected", [
    ("3.15.1", True), ("3.11.0", True), ("3.15.9", True), ("3.15.1.dev0", True),
    ("3.10.0", False), ("3.16.0", False), ("3.16.0rc1", False), ("4.0.0", False), ("2.15.0", False),
    ("not-a-version", False)])
def test_version_gate(version, expected):
    assert all(compat.applies(name, version) is expected for name in compat.PATCHES)


@pytest.fixture
def keras_state(monkeypatch):
    """Restores the trainer module's reduce_per_replica (patched for the whole process) after the test."""
    monkeypatch.setattr(keras_trainer, "reduce_per_replica", compat._original_reduce)
    return monkeypatch


def _model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def test_on_the_installed_keras_every_work_around_is_applied(keras_state, recwarn):
    assert all(compat.applies(name) for name in compat.PATCHES), (
        f"Keras {keras.__version__} is outside the versions tlunet/_keras_compat.py's work-arounds are for")
    model = compat.patch_for_distribution(_model())
    assert model._maybe_symbolic_build.__func__ is compat._local_symbolic_build
    assert model.predict.pads_for_replicas
    assert keras_trainer.reduce_per_replica is compat._reduce_per_replica
    assert not [w for w in recwarn if issubclass(w.category, compat.UntestedKerasWarning)]
    wrapped = model.predict
    assert compat.patch_for_distribution(model).predict is wrapped  # a second call wraps nothing twice


@pytest.mark.parametrize("version", ["3.16.0", "3.10.0", "4.0.0"])
def test_on_another_keras_nothing_is_applied_and_a_warning_says_so(keras_state, version):
    keras_state.setattr(keras, "__version__", version)
    model = _model()
    with pytest.warns(compat.UntestedKerasWarning, match=rf"not been tested with Keras {re.escape(version)} "
                      r"for distributed training.*symbolic_build \(for keras>=3\.11,<3\.16\)"):
        compat.patch_for_distribution(model)
    assert "_maybe_symbolic_build" not in vars(model)
    assert "predict" not in vars(model) and not getattr(model.predict, "pads_for_replicas", False)
    assert keras_trainer.reduce_per_replica is compat._original_reduce
