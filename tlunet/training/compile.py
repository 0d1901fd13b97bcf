"""Compiling a model for training: optimizer, loss and the segmentation metrics."""

import math

import keras

from tlunet.losses import get_loss
from tlunet.metrics import segmentation_metrics

OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "adamw": keras.optimizers.AdamW}


def compile_model(model, loss="bce_dice", learning_rate=1e-3, optimizer="adam", metrics=None,
                  jit_compile=False, classes=None, gradient_accumulation=1):
    """Compiles with a fresh optimizer and the segmentation metrics (Dice, mIoU, pixel accuracy).

    Args:
        gradient_accumulation: average the gradients of this many batches before each update, so a
            batch that does not fit in memory (large 3D patches on a small GPU) can be given as
            several smaller ones: batch_size 2 with 4 accumulation steps updates like a batch of 8
            (BatchNorm still sees batches of 2).

    Returns:
        `model`, compiled.
    """
    if isinstance(gradient_accumulation, bool) or not isinstance(gradient_accumulation, int) or gradient_accumulation < 1:
        raise ValueError(f"`gradient_accumulation` must be a whole number >= 1. Received: {gradient_accumulation!r}")
    classes = classes or model.output_shape[-1]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}. Valid: {list(OPTIMIZERS)}")
    # a number must be finite and positive; a schedule object is the optimizer's to check
    if isinstance(learning_rate, bool) or (isinstance(learning_rate, (int, float)) and not 0 < learning_rate < math.inf):
        raise ValueError(f"`learning_rate` must be a finite number > 0. Received: learning_rate={learning_rate!r}")
    if isinstance(loss, str) and classes > 1 and loss == "binary_crossentropy":
        raise ValueError(f"loss 'binary_crossentropy' does not fit a {classes}-class softmax output")
    opt = OPTIMIZERS[optimizer](learning_rate,
                                gradient_accumulation_steps=gradient_accumulation if gradient_accumulation > 1 else None)
    model.compile(optimizer=opt,
                  loss=get_loss(loss) if isinstance(loss, str) else loss,
                  metrics=metrics if metrics is not None else segmentation_metrics(classes),
                  jit_compile=jit_compile)
    return model
