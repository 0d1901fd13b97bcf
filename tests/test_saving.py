"""`.keras` round trips load without custom_objects and predict the same."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import tlunet
from tlunet.finetune import apply_strategy, trainable_params
from tlunet.layers import EncoderPreprocessing


@pytest.mark.parametrize("name,shape,kw", [
    ("unet", (32, 32, 1), {}),
    ("vgg16_unet", (32, 32, 1), {"channel_mode": "repeat"}),
    ("mobilenetv2_unet", (32, 64, 1), {"channel_mode": "fold"}),
    ("mobilenetv2_unet", (None, None, 3), {"classes": 3}),
])
def test_keras_round_trip(tmp_path, name, shape, kw):
    model = tlunet.build_model(name, input_shape=shape, **kw)
    apply_strategy(model, "decoder" if name == "mobilenetv2_unet" else "all")
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    size = tuple(d or s for d, s in zip(shape[:2], (32, 64)))
    x = np.random.default_rng(0).random((2, *size, shape[-1]), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert trainable_params(loaded) == trainable_params(model)


def test_loads_in_a_fresh_process_after_import_tlunet(tmp_path):
    model = tlunet.build_model("mobilenetv2_unet", input_shape=(32, 32, 1))
    path = tmp_path / "m.keras"
    model.save(path)
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    code = ("import numpy as np, keras, tlunet, sys; d=sys.argv[1]; "
            "m=keras.models.load_model(d+'/m.keras'); "
            "np.testing.assert_allclose(m.predict(np.load(d+'/x.npy'), verbose=0), np.load(d+'/y.npy'), atol=1e-6); "
            "print('OK', type(m.get_layer('encoder_preprocess')).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK EncoderPreprocessing" in out.stdout


def test_preprocessing_layer_config_round_trip():
    layer = EncoderPreprocessing("caffe", name="p")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, EncoderPreprocessing) and clone.mode == "caffe" and clone.name == "p"
    with pytest.raises(ValueError, match="mode"):
        EncoderPreprocessing("imagenet")
