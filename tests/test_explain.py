"""Grad-CAM and explanation figures (tlunet.explain)."""

import keras
import numpy as np
import pytest

from tlunet.data.phantoms import lung_ultrasound
from tlunet.explain import explain_figure, grad_cam
from tlunet.models import build_model, seg_to_classifier


def _seg(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("unet", input_shape=(32, 32, 1), classes=4, filters=(4, 8, 16))


def test_grad_cam_points_at_the_evidence(tmp_path):
    """Two feature channels, one seeing the left half of the frame and one the right; class 1's
    logit is the mean of the right channel, class 0's of the left. Grad-CAM of class 1 must light
    the right half and nothing of the left, and the reverse for class 0."""
    left = np.zeros((1, 16, 16, 1), "float32")
    left[:, :, :8] = 1.0
    inputs = keras.Input((16, 16, 1))
    feats = keras.layers.Lambda(lambda t: keras.ops.concatenate([t * left, t * (1 - left)], axis=-1),
                                name="features")(inputs)
    logits = keras.layers.GlobalAveragePooling2D()(feats)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    image = np.random.default_rng(0).uniform(0.5, 1.0, (16, 16, 1)).astype("float32")
    cam, cls, probs = grad_cam(model, image, class_index=1, layer="features")
    assert cls == 1 and probs.shape == (2,)
    assert cam[:, 8:].min() > 0.4 and cam[:, :8].max() == 0.0
    cam0, _, _ = grad_cam(model, image, class_index=0, layer="features")
    assert cam0[:, :8].min() > 0.4 and cam0[:, 8:].max() == 0.0


def test_explain_figure_writes_png(tmp_path):
    clf = seg_to_classifier(_seg(), 3, hidden=8)
    frame = lung_ultrasound((32, 32), n_b_lines=2, seed=0)["image"][..., None].astype("float32") / 255
    out = explain_figure(clf, frame, str(tmp_path / "why.png"), ["covid", "pneumonia", "regular"], true_label=0)
    probs = clf.predict(frame[None], verbose=0)[0]
    assert out["predicted"] == ["covid", "pneumonia", "regular"][int(probs.argmax())]
    assert out["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert (tmp_path / "why.png").stat().st_size > 5000
