"""Why did the classifier decide that? Grad-CAM and the segmentation the decision was read from.

Gare et al. 2022 turned segmentation models into classifiers so the decision could be traced to
recognisable structures (pleural line, A-lines, B-lines). `explain_figure` puts side by side: the
frame, the classifier's own segmentation overlay, the Grad-CAM heat map of the predicted class and
the class probabilities.
"""

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from tlunet.models.classifier import segmentation_branch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

# overlay colours of the segmentation labels 1-3 (background transparent), and their names in titles
LINE_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.8, 1.0), 3: (1.0, 0.85, 0.1)}
COLOUR_NAMES = {1: "red", 2: "blue", 3: "yellow"}


def _feature_tensor(model, layer):
    if layer is not None:
        return model.get_layer(layer).output
    if "head_conv" in [l.name for l in model.layers]:
        return model.get_layer("head_conv").input  # last decoder features, full resolution
    raise ValueError(f"model {model.name!r} has no `head_conv`; pass `layer=` (a conv layer name)")


def grad_cam(model, image, class_index=None, layer=None):
    """Grad-CAM (Selvaraju et al. 2017) of one image.

    Args:
        model: a classifier (e.g. from `seg_to_classifier`) outputting class probabilities.
        image: float32 (H, W, C) in [0, 1], the model's input size.
        class_index: the class to explain; default the predicted one.
        layer: name of the layer whose feature maps are weighted; default the last decoder
            features (the segmentation head's input).

    Returns:
        (heat map float32 (H, W) in [0, 1], class_index, probabilities).
    """

    x = np.asarray(image, np.float32)[None]
    if x.shape[1:] != tuple(d if d is not None else s for d, s in zip(model.input_shape[1:], x.shape[1:])):
        raise ValueError(f"`image` of shape {x.shape[1:]} does not fit the model input {model.input_shape[1:]}")
    grad_model = keras.Model(model.input, [_feature_tensor(model, layer), model.output])
    x_tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)  # records the graph even when the model has no trainable weights
        features, probs = grad_model(x_tensor, training=False)
        if class_index is None:
            class_index = int(tf.argmax(probs[0]))
        score = probs[:, class_index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=tuple(range(1, len(grads.shape) - 1)), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]
    if tuple(cam.shape) != x.shape[1:3]:
        cam = tf.image.resize(cam[..., None], x.shape[1:3])[..., 0]
    cam = cam.numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam.astype(np.float32), class_index, probs.numpy()[0]


def colour_overlay(grey, labels, alpha=0.5):
    """RGB float image: `grey` (H, W) in [0, 1] with `labels` (H, W) painted in LINE_COLOURS."""
    rgb = np.repeat(np.asarray(grey, np.float32)[..., None], 3, axis=-1)
    for c, colour in LINE_COLOURS.items():
        m = labels == c
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour)
    return np.clip(rgb, 0, 1)


def explain_figure(classifier, image, path, class_names, true_label=None, layer=None,
                   line_names=("pleura", "A", "B")):
    """Saves a PNG: frame | segmentation overlay | Grad-CAM of the predicted class | probabilities.
    `line_names`: the names of segmentation labels 1.. in the overlay's title.

    Returns:
        dict with the predicted class, its probability and the path.
    """
    image = np.asarray(image, np.float32)
    cam, predicted, probs = grad_cam(classifier, image, layer=layer)
    seg = np.asarray(segmentation_branch(classifier)(image[None], training=False))[0]
    labels = np.argmax(seg, axis=-1) if seg.shape[-1] > 1 else (seg[..., 0] >= 0.5).astype(int)
    grey = image[..., 0]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("frame" + (f" (true: {class_names[true_label]})" if true_label is not None else ""), fontsize=9)
    axes[1].imshow(colour_overlay(grey, labels))
    axes[1].set_title("segmentation: " + ", ".join(f"{name} {COLOUR_NAMES[c]}" for c, name in
                                                   enumerate(line_names, start=1) if c in COLOUR_NAMES), fontsize=9)
    axes[2].imshow(grey, cmap="gray", vmin=0, vmax=1)
    axes[2].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[2].set_title(f"Grad-CAM: {class_names[predicted]}", fontsize=9)
    for ax in axes[:3]:
        ax.set_axis_off()
    axes[3].barh(range(len(class_names)), probs, color=["tab:red" if i == predicted else "tab:gray"
                                                         for i in range(len(class_names))])
    axes[3].set_yticks(range(len(class_names)), class_names)
    axes[3].set_xlim(0, 1)
    axes[3].set_title("class probabilities", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return {"predicted": class_names[predicted], "probability": float(probs[predicted]), "path": path}


__all__ = ["colour_overlay", "explain_figure", "grad_cam"]
