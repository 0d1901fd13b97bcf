"""Segmentation losses (registered, so models compiled with them save and load by name).

All take y_true as (…, 1) binary/label maps or one-hot (…, K), and y_pred as probabilities
(sigmoid for one channel, softmax for several) unless `from_logits=True`.
"""

import keras
from keras import ops

from tlunet._suggest import did_you_mean


def _probabilities_and_targets(y_true, y_pred, from_logits):
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    channels = y_pred.shape[-1]
    if from_logits:
        y_pred = ops.sigmoid(y_pred) if channels == 1 else ops.softmax(y_pred, axis=-1)
    if channels > 1 and y_true.shape[-1] == 1:
        y_true = ops.one_hot(ops.cast(ops.squeeze(y_true, -1), "int32"), channels)
    return y_true, y_pred


def _spatial_axes(x):
    return tuple(range(1, len(x.shape) - 1))


@keras.saving.register_keras_serializable(package="tlunet")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss 1 - (2 Σ t p + s) / (Σ t + Σ p + s), per image and channel, then averaged.

    Args:
        smooth: s, keeps empty masks well defined (an empty prediction of an empty mask is 0 loss).
        from_logits: y_pred are logits.
    """

    def __init__(self, smooth=1.0, from_logits=False, name="dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = smooth
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        t, p = _probabilities_and_targets(y_true, y_pred, self.from_logits)
        axes = _spatial_axes(p)
        inter = ops.sum(t * p, axis=axes)
        denom = ops.sum(t, axis=axes) + ops.sum(p, axis=axes)
        return 1.0 - ops.mean((2.0 * inter + self.smooth) / (denom + self.smooth), axis=-1)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="tlunet")
class TverskyLoss(keras.losses.Loss):
    """Tversky loss 1 - (TP + s) / (TP + α FP + β FN + s); α = β = 0.5 is Dice, β > α favours recall."""

    def __init__(self, alpha=0.3, beta=0.7, smooth=1.0, from_logits=False, name="tversky_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta, self.smooth, self.from_logits = alpha, beta, smooth, from_logits

    def call(self, y_true, y_pred):
        t, p = _probabilities_and_targets(y_true, y_pred, self.from_logits)
        axes = _spatial_axes(p)
        tp = ops.sum(t * p, axis=axes)
        fp = ops.sum((1.0 - t) * p, axis=axes)
        fn = ops.sum(t * (1.0 - p), axis=axes)
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - ops.mean(score, axis=-1)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "smooth": self.smooth,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="tlunet")
class FocalLoss(keras.losses.Loss):
    """Focal loss (Lin et al. 2017), mean over pixels: -α_t (1 - p_t)^γ log p_t.

    One output channel: binary focal loss with α weighting the positives. Several channels:
    categorical focal loss (α applied to every class)."""

    def __init__(self, gamma=2.0, alpha=0.25, from_logits=False, name="focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma, self.alpha, self.from_logits = gamma, alpha, from_logits

    def call(self, y_true, y_pred):
        t, p = _probabilities_and_targets(y_true, y_pred, self.from_logits)
        p = ops.clip(p, 1e-7, 1.0 - 1e-7)
        if p.shape[-1] == 1:
            p_t = t * p + (1.0 - t) * (1.0 - p)
            alpha_t = t * self.alpha + (1.0 - t) * (1.0 - self.alpha)
            loss = -alpha_t * ops.power(1.0 - p_t, self.gamma) * ops.log(p_t)
        else:
            loss = -self.alpha * ops.sum(t * ops.power(1.0 - p, self.gamma) * ops.log(p), axis=-1,
                                         keepdims=True)
        return ops.mean(loss, axis=tuple(range(1, len(loss.shape))))

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="tlunet")
class BCEDiceLoss(keras.losses.Loss):
    """bce_weight * cross-entropy + dice_weight * soft Dice (binary or categorical by channels)."""

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0, from_logits=False,
                 name="bce_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.smooth, self.from_logits = smooth, from_logits
        self._dice = DiceLoss(smooth, from_logits)

    def call(self, y_true, y_pred):
        t, p = _probabilities_and_targets(y_true, y_pred, self.from_logits)
        if p.shape[-1] == 1:
            ce = keras.losses.binary_crossentropy(t, p)
        else:
            ce = keras.losses.categorical_crossentropy(t, p)
        ce = ops.mean(ce, axis=tuple(range(1, len(ce.shape))))
        return self.bce_weight * ce + self.dice_weight * self._dice.call(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight, "dice_weight": self.dice_weight,
                "smooth": self.smooth, "from_logits": self.from_logits}


LOSSES = {"dice": DiceLoss, "bce_dice": BCEDiceLoss, "focal": FocalLoss, "tversky": TverskyLoss}


def get_loss(name, **kwargs):
    """A loss by short name (`LOSSES`) or any Keras loss identifier."""
    if name in LOSSES:
        return LOSSES[name](**kwargs)
    try:
        return keras.losses.get(name)
    except ValueError as e:
        # Suggest from Keras' snake_case names too: `binary_crossentopy` is as likely a slip as `bce_dcie`.
        keras_names = [n for n in dir(keras.losses) if n.islower() and n not in ("get", "serialize", "deserialize")]
        raise ValueError(f"Unknown loss {name!r}{did_you_mean(name, [*LOSSES, *keras_names])}. tlunet losses: "
                         f"{list(LOSSES)}, or a Keras loss name.") from e
