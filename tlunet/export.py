"""SavedModel export for deployment: uint8 images of any size in, probabilities at the input size out."""

import os
import shutil
import tempfile

import keras
import tensorflow as tf


def export_savedmodel(model, path, size=None):
    """Writes a SavedModel with two endpoints.

    - `serve(images)`: uint8 (N, H, W, C) of any H, W -> float32 (N, H, W, classes), resizing to
      the model's input size inside the graph (bilinear, antialiased) and the output back to (H, W).
    - `serve_model(images)`: the Keras model itself on float32 [0, 1] input at its own size (what
      `model.export()` gives).

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

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")])
    def serve(images):
        original = tf.shape(images)[1:3]
        # antialias: shrinking an 800x540 scan to the model's size must average pixels (as training's
        # PIL resize does), not sample every few of them, or speckle reaches the model as noise.
        x = tf.image.resize(tf.cast(images, tf.float32) / 255.0, size, method="bilinear", antialias=True)
        y = model(x, training=False)
        return tf.image.resize(tf.cast(y, tf.float32), original, method="bilinear")

    @tf.function(input_signature=[tf.TensorSpec([None, *size, channels], tf.float32, name="images")])
    def serve_model(images):
        return tf.cast(model(images, training=False), tf.float32)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve)
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
