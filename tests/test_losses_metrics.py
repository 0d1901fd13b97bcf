"""Losses and Keras metrics: known values, agreement with the array measures, saving."""

import keras
import numpy as np
import pytest

import tlunet
from tlunet import evaluation as ev
from tlunet.losses import BCEDiceLoss, DiceLoss, FocalLoss, TverskyLoss, get_loss
from tlunet.metrics import DiceScore, segmentation_metrics


def _masks(seed=0, n=4, size=16):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, size, size, 1)) > 0.6).astype("float32")
    p = np.clip(y * 0.7 + rng.random(y.shape) * 0.3, 0.01, 0.99).astype("float32")
    return y, p


def _np(x):
    return float(keras.ops.convert_to_numpy(x))


def test_dice_loss_extremes_and_formula():
    y, p = _masks()
    assert _np(DiceLoss(smooth=0)(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert _np(DiceLoss(smooth=0)(y, 1 - y)) == pytest.approx(1.0, abs=1e-6)
    expected = np.mean([1 - 2 * (yi * pi).sum() / (yi.sum() + pi.sum()) for yi, pi in zip(y, p)])
    assert _np(DiceLoss(smooth=0)(y, p)) == pytest.approx(expected, rel=1e-5)


def test_tversky_half_half_is_dice_and_focal_gamma0_is_weighted_bce():
    y, p = _masks(1)
    # With no smoothing term, Tversky(0.5, 0.5) is exactly the Dice loss.
    assert _np(TverskyLoss(0.5, 0.5, smooth=0)(y, p)) == pytest.approx(_np(DiceLoss(smooth=0)(y, p)), rel=1e-5)
    bce = -(0.25 * y * np.log(p) + 0.75 * (1 - y) * np.log(1 - p)).mean()
    assert _np(FocalLoss(gamma=0.0, alpha=0.25)(y, p)) == pytest.approx(bce, rel=1e-4)
    assert _np(FocalLoss(gamma=2.0)(y, p)) < _np(FocalLoss(gamma=0.0)(y, p))


def test_bce_dice_is_the_sum_and_logits_agree():
    y, p = _masks(2)
    bce = _np(keras.losses.BinaryCrossentropy()(y, p))
    assert _np(BCEDiceLoss()(y, p)) == pytest.approx(bce + _np(DiceLoss()(y, p)), rel=1e-4)
    logits = np.log(p / (1 - p))
    assert _np(BCEDiceLoss(from_logits=True)(y, logits)) == pytest.approx(_np(BCEDiceLoss()(y, p)), rel=1e-4)


def test_multiclass_losses_take_sparse_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 8, 8, 1)).astype("float32")
    onehot = np.eye(3, dtype="float32")[labels[..., 0].astype(int)]
    assert _np(DiceLoss(smooth=0)(labels, onehot)) == pytest.approx(0.0, abs=1e-6)
    assert _np(BCEDiceLoss()(labels, onehot * 0.98 + 0.01)) < 0.1


def test_dice_metric_equals_mean_per_image_dice():
    y, p = _masks(3, n=6)
    p[0] = 0.0
    y[0] = 0.0  # an image empty in both counts as 1
    metric = DiceScore()
    metric.update_state(y[:3], p[:3])
    metric.update_state(y[3:], p[3:])
    expected = np.mean([ev.dice(pi[..., 0] >= 0.5, yi[..., 0] > 0.5) for yi, pi in zip(y, p)])
    assert _np(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_multiclass_dice_metric_averages_foreground_classes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (2, 10, 10))
    pred_labels = np.where(rng.random(labels.shape) < 0.8, labels, rng.integers(0, 3, labels.shape))
    metric = DiceScore()
    metric.update_state(labels[..., None].astype("float32"), np.eye(3, dtype="float32")[pred_labels])
    expected = np.mean([np.mean([ev.dice(pl == c, tl == c) for c in (1, 2)])
                        for tl, pl in zip(labels, pred_labels)])
    assert _np(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_model_with_tlunet_losses_and_metrics_saves_and_loads(tmp_path):
    model = tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))
    model.compile(optimizer="adam", loss=BCEDiceLoss(), metrics=segmentation_metrics(1))
    y, _ = _masks(4, n=2, size=32)
    model.fit(y, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.loss, BCEDiceLoss)
    a = loaded.evaluate(y, y, verbose=0, return_dict=True)
    b = model.evaluate(y, y, verbose=0, return_dict=True)
    assert set(a) >= {"loss", "dice", "miou", "pixel_accuracy"}
    assert a["dice"] == pytest.approx(b["dice"], rel=1e-5)


def test_get_loss():
    assert isinstance(get_loss("tversky", alpha=0.2), TverskyLoss)
    assert get_loss("binary_crossentropy") is not None
    with pytest.raises(ValueError, match="Unknown loss"):
        get_loss("dice_plus_plus")
