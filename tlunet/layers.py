"""Custom Keras layers used inside tlunet models (registered, so `.keras` files load without
`custom_objects` once `tlunet` is imported)."""

import keras
from keras import ops

# Per-channel statistics that keras.applications encoders were trained with. "caffe" means RGB->BGR,
# scale to [0, 255] and subtract the ImageNet mean (VGG16); "tf" means [-1, 1] (MobileNetV2);
# "torch" means ImageNet mean/std on [0, 1] (torchvision models).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="tlunet")
class EncoderPreprocessing(keras.layers.Layer):
    """Maps images in [0, 1] to the input range a pretrained encoder expects.

    tlunet models take float images scaled to [0, 1] whatever their encoder, so data pipelines and
    exported models never need to know which normalisation an encoder was trained with.

    Args:
        mode: one of "caffe", "tf", "torch", "none".
        **kwargs: passed to `keras.layers.Layer`.

    With a single-channel input the per-channel statistics are averaged (used by the "fold"
    channel mode, where the first convolution's kernel is summed over RGB).
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"`mode` must be one of {PREPROCESSING_MODES}. Received: mode={mode!r}"
            )
        self.mode = mode

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.mode in ("caffe", "torch") and channels not in (1, 3):
            raise ValueError(
                f"EncoderPreprocessing(mode={self.mode!r}) needs 1 or 3 channels. "
                f"Received: input_shape={input_shape}"
            )
        self._channels = channels

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "caffe":
            mean = _CAFFE_MEAN_BGR
            if self._channels == 3:
                x = ops.flip(x, axis=-1)  # RGB -> BGR
            else:
                mean = (sum(mean) / 3.0,)
            return x * 255.0 - ops.convert_to_tensor(mean, dtype=x.dtype)
        if self.mode == "torch":
            mean, std = _TORCH_MEAN, _TORCH_STD
            if self._channels == 1:
                mean, std = (sum(mean) / 3.0,), (sum(std) / 3.0,)
            mean = ops.convert_to_tensor(mean, dtype=x.dtype)
            std = ops.convert_to_tensor(std, dtype=x.dtype)
            return (x - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="tlunet")
class SelectiveFusion(keras.layers.Layer):
    """Attention-based selective fusion of two feature maps of equal shape (Wang et al. 2020's
    hybrid encoder, after selective-kernel units): u = a + b; s = global average of u; per-channel
    weights w = softmax over the two branches of a two-layer MLP of s; output w_a * a + w_b * b.

    Args:
        reduction: hidden width of the MLP is max(channels // reduction, min_units).
        min_units: lower bound of the hidden width.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, reduction=4, min_units=8, **kwargs):
        super().__init__(**kwargs)
        if reduction < 1 or min_units < 1:
            raise ValueError(f"`reduction` and `min_units` must be >= 1. Received: {reduction}, {min_units}")
        self.reduction = reduction
        self.min_units = min_units

    def build(self, input_shape):
        a, b = input_shape
        if tuple(a[1:]) != tuple(b[1:]):
            raise ValueError(f"SelectiveFusion needs two inputs of equal shape. Received: {a} and {b}")
        channels = a[-1]
        hidden = max(channels // self.reduction, self.min_units)
        self.squeeze_kernel = self.add_weight((channels, hidden), initializer="glorot_uniform", name="squeeze_kernel")
        self.squeeze_bias = self.add_weight((hidden,), initializer="zeros", name="squeeze_bias")
        self.attend_kernel = self.add_weight((hidden, 2 * channels), initializer="glorot_uniform", name="attend_kernel")
        self.attend_bias = self.add_weight((2 * channels,), initializer="zeros", name="attend_bias")

    def branch_weights(self, inputs):
        """(B, 2, C) softmax weights of the two branches."""
        a, b = inputs
        s = ops.mean(a + b, axis=tuple(range(1, len(a.shape) - 1)))
        z = ops.relu(ops.matmul(s, self.squeeze_kernel) + self.squeeze_bias)
        logits = ops.matmul(z, self.attend_kernel) + self.attend_bias
        return ops.softmax(ops.reshape(logits, (-1, 2, a.shape[-1])), axis=1)

    def call(self, inputs):
        a, b = inputs
        w = self.branch_weights(inputs)
        shape = (-1,) + (1,) * (len(a.shape) - 2) + (a.shape[-1],)
        return a * ops.reshape(w[:, 0], shape) + b * ops.reshape(w[:, 1], shape)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction, "min_units": self.min_units}
