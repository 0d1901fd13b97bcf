"""Sliding-window inference over whole volumes: exactness where it must be exact, no seams."""

import gc
import weakref

import keras
import numpy as np
import pytest

from tlunet.inference import _window_forward, gaussian_importance, sliding_window_predict, window_starts
from tlunet.models.unet import build_unet

PATCH = (8, 16, 16)


def _pointwise_model(seed=0):
    """A per-voxel model: any correct tiling must give exactly the whole-volume result."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*PATCH, 1))
    x = keras.layers.Conv3D(4, 1, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(x))


def _volume(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype("float32")


def test_window_positions_cover_the_axis_with_requested_overlap():
    for size, patch, overlap in [(100, 16, 0.5), (17, 16, 0.25), (64, 32, 0.0), (16, 16, 0.5), (5, 16, 0.5)]:
        starts = window_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == max(0, size - patch)
        assert all(b - a <= patch * (1 - overlap) for a, b in zip(starts, starts[1:]))


def test_single_window_equals_one_forward_pass():
    keras.utils.set_random_seed(0)
    model = build_unet((*PATCH, 1), 1, filters=(4, 8, 16), batchnorm=True)
    vol = _volume(PATCH)
    expected = model.predict(vol[None, ..., None], verbose=0)[0]
    np.testing.assert_allclose(sliding_window_predict(model, vol), expected, rtol=1e-5, atol=1e-6)


def test_volume_smaller_than_window_is_padded_and_cropped_back():
    keras.utils.set_random_seed(0)
    model = build_unet((*PATCH, 1), 1, filters=(4, 8, 16))
    vol = _volume((5, 12, 16))
    padded = np.zeros(PATCH, "float32")
    padded[:5, :12] = vol
    expected = model.predict(padded[None, ..., None], verbose=0)[0, :5, :12]
    out = sliding_window_predict(model, vol)
    assert out.shape == (5, 12, 16, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_model_is_reproduced_exactly_on_any_size(blend):
    model = _pointwise_model()
    vol = _volume((21, 37, 50))
    inputs = keras.Input((None, None, None, 1))
    whole = keras.Model(inputs, model.layers[2](model.layers[1](inputs)))
    expected = whole.predict(vol[None, ..., None], verbose=0)[0]
    np.testing.assert_allclose(sliding_window_predict(model, vol, overlap=0.5, batch_size=3, blend=blend),
                               expected, rtol=1e-5, atol=1e-6)


def test_constant_prediction_model_shows_no_seams():
    inputs = keras.Input((*PATCH, 1))
    out = keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid", kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(0.8))(inputs)
    model = keras.Model(inputs, out)
    pred = sliding_window_predict(model, _volume((30, 45, 33)), overlap=0.3)
    np.testing.assert_allclose(pred, 1 / (1 + np.exp(-0.8)), rtol=1e-6)


def test_flip_tta_averages_mirrored_passes():
    keras.utils.set_random_seed(0)
    model = build_unet((*PATCH, 1), 1, filters=(4, 8, 16))
    vol = _volume(PATCH)
    x = vol[None, ..., None]
    manual = np.mean([np.flip(model.predict(np.flip(x, a), verbose=0), a) if a else model.predict(x, verbose=0)
                      for a in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]], axis=0)[0]
    tta = sliding_window_predict(model, vol, tta=True)
    np.testing.assert_allclose(tta, manual, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, sliding_window_predict(model, vol), atol=1e-4)  # TTA did something
    # a mirror-symmetric (pointwise) model is unchanged by TTA
    pm, big = _pointwise_model(), _volume((12, 20, 20))
    np.testing.assert_allclose(sliding_window_predict(pm, big, tta=(1, 2)), sliding_window_predict(pm, big),
                               rtol=1e-5, atol=1e-6)


def test_gaussian_weights_peak_in_the_centre_and_are_positive():
    w = gaussian_importance((8, 16, 16))
    assert w.min() > 0 and w.max() == 1.0
    assert w[4, 8, 8] == w.max() and w[4, 8, 8] > w[0, 8, 8] > w[0, 0, 0]
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])  # symmetric about the centre


def test_bad_arguments_are_named():
    model = _pointwise_model()
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(model, _volume(PATCH), overlap=1.0)
    with pytest.raises(ValueError, match="volume"):
        sliding_window_predict(model, _volume((8, 16)))
    with pytest.raises(ValueError, match="NaN"):
        sliding_window_predict(model, np.full(PATCH, np.nan, "float32"))
    with pytest.raises(ValueError, match="tta"):
        sliding_window_predict(model, _volume(PATCH), tta=(5,))


def test_a_short_last_batch_of_windows_costs_no_second_trace_and_the_model_can_go():
    """3 windows at batch_size 2 end in a batch of 1: one trace serves both sizes, on this volume and the
    next; the cached trace holds no reference that keeps a deleted model alive."""
    model = _pointwise_model()
    sliding_window_predict(model, _volume((8, 16, 40)), overlap=0.0, batch_size=2)  # windows at 0, 16, 24
    sliding_window_predict(model, _volume((8, 32, 16)), overlap=0.0, batch_size=3)
    assert _window_forward(model).experimental_get_tracing_count() == 1
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None, "the cached window trace keeps the model alive"
