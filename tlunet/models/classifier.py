"""Reverse transfer (Gare et al. 2022): a trained segmentation U-Net turned into an image classifier.

Design: the classifier keeps the whole segmentation network and reads its decision from two
things the network already computes —

- the *class-wise pooled segmentation maps*: for each segmented class, its mean and max
  probability over the frame ("how much of the frame is B-line", "is there any pleural line").
  These are the quantities a sonographer reasons with (B-line count, pleural-line integrity), so
  the classifier's evidence stays visible as the segmentation it came from;
- the *pooled last decoder features* (the input of the segmentation head): what the maps threshold
  away (texture, irregularity) that a diagnosis may still need.

Both feed a small dense head. Keeping the segmentation head inside the classifier is what lets a
decision be shown beside its segmentation overlay and Grad-CAM (`tlunet.explain`). The baseline is
the same architecture from random initialisation (`weights="random"`), so the comparison isolates
what the pre-training contributed.
"""

import keras
from keras import layers

FEATURE_INPUTS = ("maps", "features", "both")


def seg_to_classifier(seg_model, classes, *, inputs="both", hidden=64, dropout=0.3, weights="keep",
                      name=None):
    """Builds a classifier on top of (a copy of) a segmentation model.

    Args:
        seg_model: a tlunet segmentation model (has `head_conv` / `head_activation` layers).
        classes: number of image classes (e.g. 3: COVID-19, pneumonia, normal).
        inputs: "maps" (class-wise pooled segmentation maps), "features" (pooled decoder features)
            or "both".
        hidden: units of the dense layer; 0 for a linear classifier.
        dropout: dropout rate before the output layer.
        weights: "keep" copies the segmentation model's trained weights; "random" keeps the
            architecture only (the non-pretrained baseline).
        name: model name; default `<seg name>_classifier`.

    Returns:
        A functional `keras.Model` from the image to class probabilities (softmax, float32). The
        segmentation layers keep their names, so `tlunet.finetune` strategies (e.g.
        "frozen_encoder") apply; the new layers form the group `classifier`. The source model
        is not modified.
    """
    if inputs not in FEATURE_INPUTS:
        raise ValueError(f"`inputs` must be one of {FEATURE_INPUTS}. Received: inputs={inputs!r}")
    if weights not in ("keep", "random"):
        raise ValueError(f"`weights` must be 'keep' or 'random'. Received: weights={weights!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"`classes` must be an integer >= 2. Received: classes={classes!r}")
    names = {layer.name for layer in seg_model.layers}
    if not {"head_conv", "head_activation"} <= names:
        raise ValueError(f"seg_to_classifier needs a tlunet segmentation model with `head_conv` and "
                         f"`head_activation` layers; model {seg_model.name!r} has neither.")
    body = keras.models.clone_model(seg_model)
    if weights == "keep":
        body.set_weights(seg_model.get_weights())
    maps = body.get_layer("head_activation").output
    features = body.get_layer("head_conv").input
    spatial_dims = len(maps.shape) - 2
    gap = layers.GlobalAveragePooling2D if spatial_dims == 2 else layers.GlobalAveragePooling3D
    gmp = layers.GlobalMaxPooling2D if spatial_dims == 2 else layers.GlobalMaxPooling3D
    pooled = []
    if inputs in ("maps", "both"):
        pooled += [gap(name="classifier_map_mean")(maps), gmp(name="classifier_map_max")(maps)]
    if inputs in ("features", "both"):
        pooled.append(gap(name="classifier_feature_mean")(features))
    x = pooled[0] if len(pooled) == 1 else layers.Concatenate(name="classifier_concat")(pooled)
    if hidden:
        x = layers.Dense(hidden, activation="relu", name="classifier_dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name="classifier_dropout")(x)
    x = layers.Dense(classes, name="classifier_logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="classifier_output")(x)
    return keras.Model(body.input, outputs, name=name or f"{seg_model.name}_classifier")


def segmentation_branch(classifier):
    """The segmentation maps inside a classifier from `seg_to_classifier`, as a model sharing its
    weights (for overlays of what the classifier saw)."""
    if "head_activation" not in [layer.name for layer in classifier.layers]:
        raise ValueError(f"classifier {classifier.name!r} has no segmentation head (built with "
                         "inputs='features', which drops it); build it with inputs='maps' or 'both'.")
    return keras.Model(classifier.input, classifier.get_layer("head_activation").output,
                       name=f"{classifier.name}_segmentation")


__all__ = ["FEATURE_INPUTS", "seg_to_classifier", "segmentation_branch"]
