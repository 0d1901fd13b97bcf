"""How a 2D segmentation model's probabilities become masks, in one place: flip test-time
augmentation (TTA), the threshold (one output channel; several channels take the argmax) and
keeping the largest connected region.

`PostProcess` holds the three settings, as a run config's `evaluation` section does. It applies
them in NumPy (a run's test scoring, `tlunet evaluate`, `tlunet predict`) and builds the same steps
as TensorFlow ops (the exported SavedModel's `serve`, `PostProcess.as_tf`). It is made from a run
config's `evaluation` mapping (`from_config`), from a run folder (`from_run`) or from the command
line's flags over a run folder (`from_flags`).
"""

import dataclasses
import numbers
import os

import numpy as np
import tensorflow as tf
import yaml
from PIL import Image
from skimage import measure

from tlunet.resources import ConfigError

IMAGE_TTA = (None, "flip")
# how a 2D run's test images are scored (a run config's `evaluation`; an old config without a key
# meant this default)
EVALUATION_DEFAULTS = {"tta": None, "threshold": 0.5, "largest_component": False}
# the command line's flag for each setting
FLAGS = {"tta": "--tta", "largest_component": "--largest-component", "threshold": "--threshold"}
# what a flag-less setting read from a bad run config can be replaced with
_FIXES = {"tta": "pass --tta none or flip", "largest_component": "pass --largest-component or --no-largest-component",
          "threshold": "pass --threshold"}


def _is_threshold(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and 0 < value < 1


# setting: (test, what a config value must be, what a Python argument must be)
_RULES = {
    "tta": (lambda v: v in IMAGE_TTA, "one of [None, 'flip']", "None or 'flip'"),
    "largest_component": (lambda v: isinstance(v, (bool, np.bool_)), "true or false", "True or False"),
    "threshold": (_is_threshold, "a number in (0, 1)", "a number in (0, 1)"),
}


def _check(values, labels, config, fixes=None):
    """Raises for the first of `values` that breaks its rule: ConfigError naming its label and what a
    config must hold (`config`), else ValueError naming what the argument must be; `fixes` maps a
    setting to what to do instead, added to the message."""
    for key, value in values.items():
        test, in_config, in_python = _RULES[key]
        if not test(value):
            fix = f"; {fixes[key]}" if fixes and key in fixes else ""
            error = ConfigError if config else ValueError
            raise error(f"{labels[key]} must be {in_config if config else in_python}. Received: {value!r}{fix}")


class BadModelOutput(ValueError):
    """A model gave values that are not probabilities: NaN or infinite, or outside [0, 1]."""


def check_probabilities(probs, model):
    """`probs` if every value is a probability; else `BadModelOutput` naming the model and the values,
    so a broken model (one whose training diverged outputs NaN) is never scored or written out."""
    probs = np.asarray(probs)
    finite = np.isfinite(probs)
    if not finite.all():
        raise BadModelOutput(f"model {model.name!r} outputs NaN or infinite values ({(~finite).sum()} of {probs.size}): "
                             "its weights are broken, as after training that diverged (retrain it with a lower "
                             "learning rate)")
    low, high = (float(probs.min()), float(probs.max())) if probs.size else (0.0, 0.0)
    if low < -1e-6 or high > 1 + 1e-6:  # float round-off aside
        raise BadModelOutput(f"model {model.name!r} outputs values in [{low:.4g}, {high:.4g}], not probabilities in "
                             "[0, 1]: tlunet scores models that end in a sigmoid or softmax")
    return probs


def predict_images(model, x, batch_size=8, tta=None):
    """Probabilities of a 2D model on float images `x` (N, H, W, C) in [0, 1]; `tta="flip"`
    averages each image's and its left-right mirror's (as a run's `evaluation.tta: flip`).

    Raises:
        BadModelOutput: the model's outputs are not probabilities (`check_probabilities`).
    """
    _check({"tta": tta}, {"tta": "tta"}, config=False)
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    if tta == "flip":
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)[:, :, ::-1]) / 2
    return check_probabilities(probs, model)


def largest_region(mask):
    """The largest connected foreground region of a mask (bool, 8-connected); all False if there is
    none. Of two equal regions, the one whose first pixel comes first in reading order."""
    labels = measure.label(np.asarray(mask) > 0)
    if labels.max() == 0:
        return np.zeros(labels.shape, bool)
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def resize_probabilities(prob, size):
    """A probability map (h, w) resized bilinearly (PIL) to `size` (H, W), float32; unchanged when it
    has that size already."""
    prob = np.asarray(prob, np.float32)
    h, w = size
    return np.asarray(Image.fromarray(prob).resize((w, h), Image.BILINEAR)) if prob.shape != (h, w) else prob


def run_config_path(model_path):
    """The config.yaml beside a model file (a run folder's, when the model is a run's model.keras)."""
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.yaml")


def read_run_config(model_path, hint):
    """The parsed config.yaml beside a run's model.keras, or None if there is none.

    Raises:
        ValueError: the file is unreadable; the message names it and ends with `hint`.
    """
    config = run_config_path(model_path)
    if not os.path.isfile(config):
        return None
    try:
        with open(config) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{config}: unreadable run config beside {model_path} ({type(e).__name__}); {hint}") from e


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """The steps from a 2D model's output to a mask, as a run's `evaluation` section names them.

    Attributes:
        threshold: the foreground probability of a one-output-channel model, in (0, 1): a pixel is
            foreground when its probability is `>= threshold`. Models with several output channels
            take the argmax instead.
        tta: None, or "flip" to average each image's and its left-right mirror's probabilities.
        largest_component: keep only the largest connected region (8-connected) of each mask;
            one-channel models only.

    Raises:
        ValueError: a setting that is not one of these (the message names it).
    """

    threshold: float = 0.5
    tta: str | None = None
    largest_component: bool = False

    def __post_init__(self):
        _check(self.to_dict(), {k: k for k in EVALUATION_DEFAULTS}, config=False)
        object.__setattr__(self, "largest_component", bool(self.largest_component))

    def to_dict(self):
        """The `{"tta", "threshold", "largest_component"}` mapping a run config's `evaluation` holds."""
        return {"tta": self.tta, "threshold": self.threshold, "largest_component": self.largest_component}

    # ------------------------------------------------------------------------------ made from
    @classmethod
    def from_config(cls, mapping, where=None):
        """The PostProcess a run config's `evaluation` mapping gives: its `tta`, `threshold` and
        `largest_component`, each the default where the mapping lacks it (other keys, such as
        `ensemble`, are not read); None gives the defaults.

        Args:
            mapping: the `evaluation` section, or None.
            where: what to name in errors, e.g. the config's path.

        Raises:
            ConfigError: `mapping` is not a mapping, or holds a bad value; the message names `where`
                and the key (`evaluation.tta`).
        """
        prefix = f"{where}: " if where else ""
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise ConfigError(f"{prefix}`evaluation` is not a mapping ({mapping!r})")
        values = {k: mapping.get(k, default) for k, default in EVALUATION_DEFAULTS.items()}
        _check(values, {k: f"{prefix}evaluation.{k}" for k in values}, config=True)
        return cls(**values)

    @classmethod
    def from_run(cls, model_path):
        """The PostProcess a run was evaluated with: the `evaluation` section of the config.yaml beside
        `model_path` (a run's model.keras), or the defaults when there is no config.yaml beside it.

        Raises:
            ValueError: the config.yaml is unreadable or its `evaluation` is bad (the message names it).
        """
        return cls.from_flags(model_path)[0]

    @classmethod
    def from_flags(cls, model_path, tta=None, largest_component=None, threshold=None):
        """(PostProcess, where each setting came from) for `tlunet evaluate`, `predict` and `export`:
        each setting from its flag, else from the `evaluation` section of the config.yaml beside
        `model_path` when the model is a run's model.keras (read only for what no flag gives), else
        the default; so the commands work as the run was evaluated.

        Args:
            model_path: the model file.
            tta: `--tta` as given: None (not given), "none" or "flip".
            largest_component: `--largest-component` (True), `--no-largest-component` (False) or
                None (neither).
            threshold: `--threshold`, or None.

        Returns:
            (PostProcess, {setting: its flag, e.g. "--tta", or the config.yaml's path}); a setting
            left at its default has no entry.

        Raises:
            ValueError: a bad flag value, or an unreadable config.yaml or bad `evaluation` value for a
                setting no flag gives; the message names the flag or the file and key, and the flags
                to pass instead.
        """
        flags = {"tta": None if tta in (None, "none") else tta, "largest_component": largest_component,
                 "threshold": threshold}
        values = {k: v for k, v in flags.items() if v is not None or (k == "tta" and tta is not None)}
        source = {k: FLAGS[k] for k in values}
        _check(values, FLAGS, config=False)
        missing = [k for k in EVALUATION_DEFAULTS if k not in values]
        config = run_config_path(model_path)
        if missing and os.path.isfile(config):
            hint = "pass " + ", ".join(FLAGS[k] for k in missing)
            saved = read_run_config(model_path, hint)
            evaluation = saved.get("evaluation") if isinstance(saved, dict) else None
            if evaluation is not None and not isinstance(evaluation, dict):
                raise ValueError(f"{config}: `evaluation` is not a mapping ({evaluation!r}); {hint}")
            read = {k: evaluation[k] for k in missing if k in (evaluation or {})}
            _check(read, {k: f"{config}: evaluation.{k}" for k in read}, config=True, fixes=_FIXES)
            values.update(read)
            source.update(dict.fromkeys(read, config))
        return cls(**{**EVALUATION_DEFAULTS, **values}), source

    # ------------------------------------------------------------------------------ in NumPy
    def probabilities(self, model, images, batch_size=8):
        """Probabilities (N, H, W, K) of `model` on float images (N, H, W, C) in [0, 1], averaged
        with each image's left-right mirror's for `tta="flip"` (`predict_images`).

        Raises:
            BadModelOutput: the model's outputs are not probabilities.
        """
        return predict_images(model, images, batch_size, self.tta)

    def labels(self, probs):
        """Label maps (N, H, W) of probabilities (N, H, W, K): uint8 `>= threshold` of one channel, the
        argmax of several; with `largest_component` only the largest region of each.

        Raises:
            ValueError: `largest_component` with more than one channel.
        """
        probs = np.asarray(probs)
        labels = (probs[..., 0] >= self.threshold).astype(np.uint8) if probs.shape[-1] == 1 else np.argmax(probs, -1)
        if self.largest_component:
            if probs.shape[-1] != 1:
                raise ValueError(f"largest_component keeps one region of a one-channel model; this one has "
                                 f"{probs.shape[-1]}")
            labels = np.stack([largest_region(m) for m in labels]).astype(np.uint8) if len(labels) else labels
        return labels

    def predict(self, model, images, batch_size=8):
        """(probabilities, label maps) of `model` on float images (N, H, W, C) in [0, 1]:
        `probabilities` then `labels`."""
        probs = self.probabilities(model, images, batch_size)
        return probs, self.labels(probs)

    def mask_at_size(self, prob, size):
        """One image's mask (bool) at `size` (H, W) from its one-channel probabilities `prob` (h, w):
        resized bilinearly to `size` first, then thresholded (`>=`), then with `largest_component`
        only its largest region. The HC18 challenge's order: resize before threshold."""
        mask = resize_probabilities(prob, size) >= self.threshold
        return largest_region(mask) if self.largest_component else mask

    # ------------------------------------------------------------------------------ in TensorFlow
    def check_model(self, model):
        """`model` if these steps apply to its output; ValueError for `largest_component` on a model
        with more than one output channel."""
        if self.largest_component and model.output_shape[-1] != 1:
            raise ValueError(f"largest_component keeps one region of a one-channel (binary) model; {model.name!r} "
                             f"has {model.output_shape[-1]} output channels")
        return model

    def as_tf(self, model, size):
        """The same steps as TensorFlow ops, as the exported `serve` runs them: a function of float32
        images (N, H, W, C) in [0, 1], any H and W, returning float32 probabilities (N, H, W, K) at
        that size. The images are resized to `size` (bilinear, antialiased, as training's PIL resize
        averages pixels) for `model`; `tta="flip"` averages the image's and its mirror's
        probabilities; they are resized back to (H, W) (bilinear); and `largest_component` sets every
        pixel farther than one pixel from the largest region of `probabilities >= threshold` to 0
        (`keep_largest_region`). The threshold itself is left to the caller: the result stays
        probabilities.

        Raises:
            ValueError: `largest_component` for a model with more than one output channel.
        """
        self.check_model(model)

        def serve_images(x):
            original = tf.shape(x)[1:3]
            x = tf.image.resize(x, size, method="bilinear", antialias=True)
            y = tf.cast(model(x, training=False), tf.float32)
            if self.tta == "flip":  # the mean of the image's and its mirror's probabilities
                y = (y + tf.reverse(tf.cast(model(tf.reverse(x, [2]), training=False), tf.float32), [2])) / 2.0
            y = tf.image.resize(y, original, method="bilinear")
            # at the image's own size, after the resize, as `mask_at_size` keeps it
            return keep_largest_region(y, self.threshold) if self.largest_component else y

        return serve_images


def keep_largest_region(probs, threshold=0.5):
    """In-graph post-processing of one-channel probabilities (N, H, W, 1): every pixel farther than
    one pixel from the largest connected region of `probs >= threshold` is set to 0; the region and
    the pixels around its edge keep their probabilities. The region is the one `largest_region`
    keeps (8-connected; of two equal ones, the one whose first pixel comes first in reading order).
    Images with no pixel at or above `threshold` are returned unchanged.

    Regions are labelled by spreading, through each region, the label of its first pixel: a step
    takes the maximum along every horizontal and vertical run of foreground, then over each 3x3
    neighbourhood, until nothing changes. A compact region takes a few steps; a ragged or zigzag
    map takes one step per turn.
    """
    fg = probs[..., 0] >= tf.cast(threshold, probs.dtype)
    shape = tf.shape(fg)
    pixels = shape[1] * shape[2]
    # label = pixels - (index in reading order): the largest label of a region is its first pixel's
    first = tf.reshape(pixels - tf.range(pixels, dtype=tf.int32), [1, shape[1], shape[2]])
    fg_t = tf.transpose(fg, [0, 2, 1])

    def run_max(labels, mask):  # each horizontal run of foreground takes its largest label
        start = mask & ~tf.pad(mask[:, :, :-1], [[0, 0], [0, 0], [1, 0]])
        segment = tf.reshape(tf.cumsum(tf.reshape(tf.cast(start, tf.int32), [-1])), tf.shape(mask))
        segment *= tf.cast(mask, tf.int32)
        top = tf.math.unsorted_segment_max(tf.reshape(labels, [-1]), tf.reshape(segment, [-1]),
                                           tf.reduce_max(segment) + 1)
        return tf.where(mask, tf.gather(top, segment), 0)

    def step(labels, _):
        new = run_max(labels, fg)
        new = tf.transpose(run_max(tf.transpose(new, [0, 2, 1]), fg_t), [0, 2, 1])
        new = tf.where(fg, tf.nn.max_pool2d(new[..., None], 3, 1, "SAME")[..., 0], 0)
        return new, tf.reduce_any(new != labels)

    labels, _ = tf.while_loop(lambda labels, changed: changed, step, [tf.where(fg, first, 0), tf.constant(True)])
    counts = tf.math.bincount(tf.reshape(labels, [shape[0], -1]), minlength=pixels + 1, axis=-1)
    # the most pixels; of equal counts the largest label (the earliest first pixel): argmax of the
    # counts in reverse label order, whose first maximum is that label
    best = pixels - tf.argmax(tf.reverse(counts[:, 1:], [1]), 1, output_type=tf.int32)
    region = tf.cast(labels == best[:, None, None], probs.dtype)[..., None]
    near = tf.nn.max_pool2d(region, 3, 1, "SAME")
    return tf.where(tf.reduce_any(fg, [1, 2])[:, None, None, None], probs * near, probs)
