"""Encoder weights from a file on disk (the offline route), in both 1-channel modes."""

import keras
import numpy as np
import pytest

import tlunet
from tlunet.encoders import ENCODERS

APPS = {"vgg16_unet": ("vgg16", keras.applications.VGG16),
        "mobilenetv2_unet": ("mobilenetv2", keras.applications.MobileNetV2)}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """A randomly initialised include_top=False model per encoder, saved as Keras 3 weights and
    as a legacy .h5 (the format keras.applications downloads)."""
    keras.utils.set_random_seed(123)
    out = {}
    for model_name, (_, app) in APPS.items():
        ref = app(include_top=False, weights=None, input_shape=(64, 64, 3))
        # Make BN statistics non-trivial so a file that failed to load could not pass by chance.
        for layer in ref.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(np.random.default_rng(1).random(layer.moving_mean.shape))
        d = tmp_path_factory.mktemp(model_name)
        ref.save_weights(d / "enc.weights.h5")
        ref.save(d / "enc.h5")
        out[model_name] = ({l.name: l.get_weights() for l in ref.layers}, d)
    return out


def _assert_encoder_holds(encoder, ref, first_conv=None):
    checked = 0
    for layer in encoder.layers:
        if not layer.weights:
            continue
        expected = ref[layer.name]
        if layer.name == first_conv:
            expected = [expected[0].sum(axis=2, keepdims=True)] + expected[1:]
        for got, want in zip(layer.get_weights(), expected):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
        checked += 1
    assert checked == sum(1 for w in ref.values() if w)


@pytest.mark.parametrize("model_name", list(APPS))
@pytest.mark.parametrize("fmt", ["enc.weights.h5", "enc.h5"])
@pytest.mark.parametrize("shape,mode", [((32, 32, 3), "repeat"), ((64, 32, 1), "repeat"),
                                        ((64, 32, 1), "fold")])
def test_encoder_holds_the_file_weights(weight_files, model_name, fmt, shape, mode):
    ref, folder = weight_files[model_name]
    model = tlunet.build_model(model_name, input_shape=shape, encoder_weights=folder / fmt,
                               channel_mode=mode)
    encoder = model.get_layer("encoder")
    folded = shape[-1] == 1 and mode == "fold"
    assert encoder.input_shape[-1] == (1 if folded else 3)
    _assert_encoder_holds(encoder, ref, ENCODERS[APPS[model_name][0]].first_conv if folded else None)


def test_fold_equals_repeat_on_grey_images(weight_files):
    """MobileNetV2's [-1, 1] scaling is the same on every channel, so summing the first kernel over
    RGB must give exactly the features of the grey image tiled to RGB."""
    _, folder = weight_files["mobilenetv2_unet"]
    kw = dict(input_shape=(64, 64, 1), encoder_weights=folder / "enc.weights.h5")
    repeat = tlunet.build_model("mobilenetv2_unet", channel_mode="repeat", **kw)
    fold = tlunet.build_model("mobilenetv2_unet", channel_mode="fold", **kw)
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    # The bridge, as the outer graph sees it: the input of the first decoder upsampling.
    tail = keras.Model(repeat.input, repeat.get_layer("decoder_stage0_upsample").input)
    tail_fold = keras.Model(fold.input, fold.get_layer("decoder_stage0_upsample").input)
    a, b = tail.predict(x, verbose=0), tail_fold.predict(x, verbose=0)
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5") as info:
        tlunet.build_model("vgg16_unet", input_shape=(32, 32, 3), encoder_weights=missing)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(info.value)


def test_weights_of_another_encoder_are_refused(weight_files):
    _, folder = weight_files["mobilenetv2_unet"]
    with pytest.raises(ValueError, match="does not load into the vgg16 encoder"):
        tlunet.build_model("vgg16_unet", input_shape=(32, 32, 3),
                           encoder_weights=folder / "enc.weights.h5")


def test_unsupported_extension_is_refused(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not keras")
    with pytest.raises(ValueError, match="unsupported extension"):
        tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 3), encoder_weights=bad)


def test_preprocessing_matches_keras_applications():
    """The in-model preprocessing equals keras.applications' own preprocess_input on [0, 255] images."""
    from tlunet.layers import EncoderPreprocessing
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    for mode, module in [("caffe", keras.applications.vgg16), ("tf", keras.applications.mobilenet_v2)]:
        ours = keras.ops.convert_to_numpy(EncoderPreprocessing(mode)(x))
        np.testing.assert_allclose(ours, module.preprocess_input(x * 255.0), rtol=1e-5, atol=1e-4)
