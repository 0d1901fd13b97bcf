import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from a clean Keras graph/name state and a fixed seed."""
    keras.backend.clear_session(free_memory=False)  # no gc.collect per test: seconds each, and Python collects anyway
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip (a user's fresh clone has no shared folder)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def rng():
    return np.random.default_rng(0)
