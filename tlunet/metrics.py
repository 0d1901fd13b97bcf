"""Keras segmentation metrics (registered) and the metric set each task reports."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tlunet")
class DiceScore(keras.metrics.Metric):
    """Mean per-image Dice of thresholded (binary) or argmax (multi-class) predictions.

    For several classes the per-image score averages the foreground classes (label 0 is
    background). An image whose prediction and truth are both empty scores 1.

    Args:
        threshold: for one-channel probabilities.
        name: metric name.
    """

    def __init__(self, threshold=0.5, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        channels = y_pred.shape[-1]
        y_true = ops.cast(y_true, "float32")
        if channels == 1:
            p = ops.cast(y_pred >= self.threshold, "float32")
            t = ops.cast(y_true >= 0.5, "float32")
        else:
            labels = ops.cast(ops.squeeze(y_true, -1), "int32") if y_true.shape[-1] == 1 \
                else ops.argmax(y_true, axis=-1)
            t = ops.one_hot(labels, channels)[..., 1:]
            p = ops.one_hot(ops.argmax(y_pred, axis=-1), channels)[..., 1:]
        axes = tuple(range(1, len(p.shape) - 1))
        inter = ops.sum(t * p, axis=axes)
        denom = ops.sum(t, axis=axes) + ops.sum(p, axis=axes)
        per_class = ops.where(denom > 0, 2.0 * inter / ops.maximum(denom, 1e-7), 1.0)
        per_image = ops.mean(per_class, axis=-1)
        self.total.assign_add(ops.sum(per_image))
        self.count.assign_add(ops.cast(ops.shape(per_image)[0], "float32"))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def segmentation_metrics(classes=1, threshold=0.5):
    """Dice, mean IoU over all classes (background included, as Wang 2023's mIoU) and pixel accuracy.

    Args:
        classes: model output channels (1 = sigmoid binary).
        threshold: for binary outputs.
    """
    if classes == 1:
        return [DiceScore(threshold),
                keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=threshold, name="miou"),
                keras.metrics.BinaryAccuracy(threshold=threshold, name="pixel_accuracy")]
    return [DiceScore(),
            keras.metrics.MeanIoU(num_classes=classes, sparse_y_true=True, sparse_y_pred=False, name="miou"),
            keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")]
