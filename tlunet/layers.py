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
