"""Joint image/mask augmentation in TensorFlow ops (graph mode, parallel, seeded).

Geometry is one affine resampling per sample — bilinear for the image, nearest for the mask, so
masks stay binary/integer — composed like Keras' ImageDataGenerator: rotation and shear in degrees,
shift as a fraction of the size, zoom drawn per axis from [1 - zoom, 1 + zoom]. Intensity changes
(brightness, contrast, gamma, speckle) touch the image only. Every random draw comes from a
per-sample seed, so a pipeline built with the same seed yields the same samples.
"""

import math
from dataclasses import asdict, dataclass, replace

import tensorflow as tf

from tlunet._suggest import did_you_mean, did_you_mean_keys

FILL_MODES = ("constant", "nearest", "reflect")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges (0 disables a transform).

    Attributes:
        rotation: degrees, uniform in [-rotation, rotation].
        shift: fraction of width/height, uniform in [-shift, shift] per axis.
        zoom: per-axis scale uniform in [1 - zoom, 1 + zoom].
        shear: degrees, uniform in [-shear, shear].
        hflip, vflip: probabilities of a horizontal / vertical flip.
        brightness: added to [0, 1] images, uniform in [-brightness, brightness].
        contrast: factor about the image mean, uniform in [1 - contrast, 1 + contrast].
        gamma: exponent exp(u), u uniform in [-gamma, gamma].
        speckle: std of multiplicative Gaussian noise (ultrasound-like), image * (1 + speckle * n).
        fill_mode: how pixels moved in from outside are filled: constant (0), nearest, reflect.
    """

    rotation: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0
    shear: float = 0.0
    hflip: float = 0.0
    vflip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    speckle: float = 0.0
    fill_mode: str = "constant"

    def __post_init__(self):
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"`fill_mode` must be one of {FILL_MODES}. Received: {self.fill_mode!r}")
        for key, value in asdict(self).items():
            if key != "fill_mode" and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"Augmentation `{key}` must be a number >= 0. Received: {value!r}")
        for key in ("hflip", "vflip"):
            if getattr(self, key) > 1:
                raise ValueError(f"`{key}` is a probability. Received: {getattr(self, key)}")

    @property
    def geometric(self):
        """Whether any geometric transform (rotation, shift, zoom, shear) is switched on."""
        return any((self.rotation, self.shift, self.zoom, self.shear))


AUGMENT_PRESETS = {
    "none": AugmentConfig(),
    # Cheng & Lam 2021 (ImageDataGenerator arguments of their code).
    "cheng2021": AugmentConfig(rotation=0.15, shift=0.05, shear=0.05, zoom=0.05, hflip=0.5,
                               fill_mode="nearest"),
    # Wang et al. 2023: rotation within +-25 degrees, horizontal flip p=0.5, vertical flip p=0.1.
    "wang2023": AugmentConfig(rotation=25.0, hflip=0.5, vflip=0.1),
    # A general ultrasound recipe: mild geometry plus gain/contrast/speckle changes.
    "ultrasound": AugmentConfig(rotation=10.0, shift=0.05, zoom=0.1, hflip=0.5, brightness=0.1,
                                contrast=0.2, gamma=0.2, speckle=0.1),
}


def get_augment_config(augment):
    """Resolves None, a preset name, a dict of `AugmentConfig` fields or an `AugmentConfig`."""
    if augment is None:
        return AUGMENT_PRESETS["none"]
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, str):
        if augment not in AUGMENT_PRESETS:
            raise ValueError(f"Unknown augmentation preset {augment!r}{did_you_mean(augment, AUGMENT_PRESETS)}. "
                             f"Valid: {list(AUGMENT_PRESETS)}")
        return AUGMENT_PRESETS[augment]
    if isinstance(augment, dict):
        base = get_augment_config(augment.get("preset", "none"))
        fields = {k: v for k, v in augment.items() if k != "preset"}
        unknown = sorted(set(fields) - set(asdict(base)))
        if unknown:
            raise ValueError(f"Unknown augmentation options {unknown}{did_you_mean_keys(unknown, asdict(base))}. "
                             f"Valid: {sorted(asdict(base))}")
        return replace(base, **fields)
    raise ValueError(f"`augment` must be None, a preset name, a dict or AugmentConfig. Received: {augment!r}")


def _affine_params(cfg, u, height, width, flip_x=None, flip_y=None):
    """Output->input affines (ImageProjectiveTransform's 8 numbers per row) from uniforms u [B, 6+].

    `flip_x`/`flip_y` ([B] bools) fold flips about the centre into the same matrix, so a flipped
    sample costs no extra pass over its pixels.
    """
    sym = lambda i, r: (2.0 * u[:, i] - 1.0) * r  # noqa: E731 - uniform in [-r, r]
    theta = sym(0, cfg.rotation * math.pi / 180.0)
    shear = sym(1, cfg.shear * math.pi / 180.0)
    zx, zy = 1.0 + sym(2, cfg.zoom), 1.0 + sym(3, cfg.zoom)
    tx, ty = sym(4, cfg.shift) * width, sym(5, cfg.shift) * height
    c, s = tf.cos(theta), tf.sin(theta)
    # A = R(theta) @ Shear @ Zoom, acting on (x, y) = (col, row) about the image centre.
    a00, a01 = c * zx, (-c * tf.sin(shear) - s * tf.cos(shear)) * zy
    a10, a11 = s * zx, (-s * tf.sin(shear) + c * tf.cos(shear)) * zy
    if flip_x is not None:  # A @ diag(-1, 1): mirror the output x about the centre
        sign = tf.where(flip_x, -1.0, 1.0)
        a00, a10 = a00 * sign, a10 * sign
    if flip_y is not None:
        sign = tf.where(flip_y, -1.0, 1.0)
        a01, a11 = a01 * sign, a11 * sign
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    b0 = cx - a00 * cx - a01 * cy + tx
    b1 = cy - a10 * cx - a11 * cy + ty
    zero = tf.zeros_like(a00)
    return tf.stack([a00, a01, b0, a10, a11, b1, zero, zero], axis=-1)


def _transform(x, transforms, interpolation, fill_mode):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation=interpolation, fill_mode=fill_mode.upper())


def _per_sample(fn, seeds, dtype=tf.float32):
    # tf.map_fn rather than vectorized_map: the stateless RNG ops have no vectorised form, and
    # vectorized_map would fall back to the same loop with a warning on every trace.
    return tf.map_fn(fn, seeds, fn_output_signature=dtype)


def augment_batch(images, masks, seeds, cfg):
    """Augments a batch, each sample with its own draws (one resampling op for the whole batch).

    Args:
        images: float32 (B, H, W, C) in [0, 1].
        masks: float32 (B, H, W, 1) labels.
        seeds: int64 (B, 2), one stateless-RNG seed per sample.
        cfg: `AugmentConfig`.

    Returns:
        (images, masks) of the same shapes; images clipped to [0, 1].
    """
    u = _per_sample(lambda s: tf.random.stateless_uniform([12], seed=s), seeds)
    flip_x = u[:, 6] < cfg.hflip if cfg.hflip else None
    flip_y = u[:, 7] < cfg.vflip if cfg.vflip else None
    if cfg.geometric:
        shape = tf.cast(tf.shape(images), tf.float32)
        t = _affine_params(cfg, u, shape[1], shape[2], flip_x, flip_y)
        images = _transform(images, t, "BILINEAR", cfg.fill_mode)
        masks = _transform(masks, t, "NEAREST", cfg.fill_mode)
    else:  # flips alone: exact reversals
        for flip, axis in ((flip_x, 2), (flip_y, 1)):
            if flip is not None:
                images = tf.where(flip[:, None, None, None], tf.reverse(images, [axis]), images)
                masks = tf.where(flip[:, None, None, None], tf.reverse(masks, [axis]), masks)
    if cfg.brightness:
        images = images + ((2.0 * u[:, 8] - 1.0) * cfg.brightness)[:, None, None, None]
    if cfg.contrast:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        factor = (1.0 + (2.0 * u[:, 9] - 1.0) * cfg.contrast)[:, None, None, None]
        images = (images - mean) * factor + mean
    if cfg.gamma:
        gamma = tf.exp((2.0 * u[:, 10] - 1.0) * cfg.gamma)[:, None, None, None]
        images = tf.pow(tf.clip_by_value(images, 0.0, 1.0), gamma)
    if cfg.speckle:
        shape = tf.shape(images)[1:]
        noise = _per_sample(lambda s: tf.random.stateless_normal(shape, seed=s + [7, 11]), seeds)
        images = images * (1.0 + cfg.speckle * noise)
    return tf.clip_by_value(images, 0.0, 1.0), masks


def augment_pair(image, mask, seed, cfg):
    """Augments one (image (H, W, C), mask (H, W, 1)) pair with stateless seed `seed` [2]; the
    same draws as that sample would get inside `augment_batch`."""
    images, masks = augment_batch(image[None], mask[None], tf.reshape(seed, [1, 2]), cfg)
    return images[0], masks[0]


def augment_volume(volume, mask, seed, flip=True, rot90=True, rotation=0.0, zoom=0.0):
    """3D augmentation of a (D, H, W, C) volume and its (D, H, W, 1) mask: flips on each axis
    (p=0.5), a random multiple of 90 degrees in the axial (H, W) plane, and a small in-plane affine
    (rotation degrees / zoom, the same for every slice)."""
    u = tf.random.stateless_uniform([8], seed=seed)
    if flip:
        for axis in range(3):
            do = u[axis] < 0.5
            volume = tf.where(do, tf.reverse(volume, [axis]), volume)
            mask = tf.where(do, tf.reverse(mask, [axis]), mask)
    if rot90:
        k = tf.cast(tf.floor(u[3] * 4.0), tf.int32)
        volume, mask = tf.image.rot90(volume, k), tf.image.rot90(mask, k)
    if rotation or zoom:
        cfg = AugmentConfig(rotation=rotation, zoom=zoom)
        shape = tf.cast(tf.shape(volume), tf.float32)
        u2 = tf.random.stateless_uniform([1, 6], seed=seed + [3, 5])
        t = tf.tile(_affine_params(cfg, u2, shape[1], shape[2]), [tf.shape(volume)[0], 1])
        volume = _transform(volume, t, "BILINEAR", "constant")  # D acts as the batch: one
        mask = _transform(mask, t, "NEAREST", "constant")        # in-plane affine for all slices
    return volume, mask
