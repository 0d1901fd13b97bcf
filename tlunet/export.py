"""SavedModel export for deployment: images of any size in (uint8 0-255 or float32 in [0, 1]),
probabilities at the input size out."""

import os
import shutil
import tempfile

import keras
import tensorflow as tf


def export_savedmodel(model, path, size=None):
    """Writes a SavedModel with three endpoints.

    - `serve(images)`: (N, H, W, C) images of any H, W, either uint8 (0-255) or float32 in
      [0, 1] -> float32 (N, H, W, classes) probabilities, resizing to the model's input size inside
      the graph (bilinear, antialiased) and the output back to (H, W).
    - `serve_float(images)`: the same for float32 images in [0, 1] only.
    - `serve_model(images)`: the Keras model itself on float32 [0, 1] input at its own size (what
      `model.export()` gives; no resizing and no range check).

    Input dtypes. Called from Python on the loaded SavedModel (`tf.saved_model.load(path).serve(x)`)
    a NumPy array or tensor goes to the uint8 or the float32 version of `serve` by its dtype; any
    other dtype (float64, int32, ...) is refused with a ValueError ("Could not find matching
    concrete function"): cast first, e.g. `x.astype("float32")` for floats in [0, 1] (NumPy's
    `x / 255.0` is float64). Float input that is outside [0, 1], NaN or infinite fails inside the
    graph with InvalidArgumentError ("float32 images must be finite and in [0, 1]"), so 0-255
    values passed as floats are refused rather than read as a white image. Signatures
    (`loaded.signatures[...]`, TF Serving, other languages) hold one dtype each: `serve` and
    `serving_default` uint8, `serve_float` and `serve_model` float32. A signature called from
    Python with a NumPy array converts it to that dtype silently, so floats given to the uint8
    `serve` signature are truncated (0.5 -> 0, 300 -> 44) where no check can see them: give it
    uint8, or use `serve_float`, where a uint8 image becomes 0-255 floats and fails the check.

    The directory is written under a temporary name and renamed when complete, so an interrupted
    export never leaves something that looks like a finished SavedModel.

    Args:
        model: a Keras model taking float images in [0, 1].
        path: output directory (must not exist).
        size: (H, W) to resize to when the model accepts any size (None dims); default: the
            model's own input size.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; export into a new directory")
    _, h, w, channels = model.input_shape
    size = tuple(size) if size is not None else (h, w)
    if None in size:
        raise ValueError(f"{model.name!r} accepts any input size; pass size=(H, W) to export it "
                         f"(each a multiple of its encoder's reduction). Received: size={size}")

    def spec(dtype):
        return tf.TensorSpec([None, None, None, channels], dtype, name="images")

    def at_input_size(x):
        original = tf.shape(x)[1:3]
        # antialias: shrinking an 800x540 scan to the model's size must average pixels (as training's
        # PIL resize does), not sample every few of them, or speckle reaches the model as noise.
        y = model(tf.image.resize(x, size, method="bilinear", antialias=True), training=False)
        return tf.image.resize(tf.cast(y, tf.float32), original, method="bilinear")

    @tf.function
    def serve(images):
        if images.dtype == tf.uint8:
            return at_input_size(tf.cast(images, tf.float32) / 255.0)
        return at_input_size(_unit_range(images))

    # The uint8 trace first: it is the endpoint's signature (and serving_default), as before.
    serve.get_concrete_function(spec(tf.uint8))
    serve.get_concrete_function(spec(tf.float32))

    @tf.function(input_signature=[spec(tf.float32)])
    def serve_float(images):
        return serve(images)  # the float32 trace above, called (not traced again)

    @tf.function(input_signature=[tf.TensorSpec([None, *size, channels], tf.float32, name="images")])
    def serve_model(images):
        return tf.cast(model(images, training=False), tf.float32)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve)
    archive.add_endpoint("serve_float", serve_float)
    archive.add_endpoint("serve_model", serve_model)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _unit_range(images):
    """`images` (float32), after an in-graph check that every value is finite and in [0, 1]."""
    lo, hi = tf.reduce_min(images), tf.reduce_max(images)
    ok = tf.reduce_all(tf.math.is_finite(images)) & (lo >= 0.0) & (hi <= 1.0)
    check = tf.debugging.Assert(ok, [
        "float32 images must be finite and in [0, 1] (uint8 images, 0-255, go to `serve` as "
        "uint8); found min", lo, "max", hi])
    with tf.control_dependencies([check]):
        return tf.identity(images)
