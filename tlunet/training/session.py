"""Process-wide training switches: seeds, op determinism and mixed precision."""

import keras
import tensorflow as tf

MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")


def configure(seed=0, deterministic=False, mixed_precision=None):
    """Process-wide switches; call before building models.

    Args:
        seed: seeds Python, NumPy and TensorFlow (`keras.utils.set_random_seed`).
        deterministic: also enable TensorFlow op determinism, so the same seed gives bit-identical
            weights (some GPU ops then raise instead of running non-deterministically).
        mixed_precision: None, "mixed_float16" (GPU) or "mixed_bfloat16" (CPU/TPU); tlunet heads
            keep their final activation in float32.
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISION}. "
                         f"Received: mixed_precision={mixed_precision!r}")
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(mixed_precision or "float32")
