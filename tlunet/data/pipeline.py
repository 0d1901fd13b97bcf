"""From files to a tf.data pipeline: parallel decode + resize into memory, then shuffle, joint
augmentation, batching and prefetch.

Contract of every 2D segmentation dataset: images float32 (H, W, C) in [0, 1] (tlunet models
normalise for their encoder inside the graph); masks float32 (H, W, 1) holding 0/1 (binary) or
class indices (multi-class, use a sparse loss).
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from PIL import Image

from tlunet.data.augment import augment_batch, get_augment_config
from tlunet.data.epochs import EpochClock, attach_clock, epoch_numbers, pass_key
from tlunet.data.io import check_same_size, read_image, read_mask

log = logging.getLogger(__name__)


@dataclass
class SegmentationSet:
    """Files of a segmentation data set and how to read them.

    Attributes:
        images: image paths.
        masks: mask paths (or annotation paths a `mask_reader` turns into masks).
        meta: one dict per pair (e.g. pixel size, subject), kept for per-case reports.
        num_classes: 2 for binary masks, else the number of labels.
        mask_reader: path -> uint8 (H, W) mask; default reads binary or label PNGs.
        arrays: (images, masks) already in memory (e.g. phantoms); then `images`/`masks` are names.
    """

    images: list
    masks: list
    meta: list = field(default_factory=list)
    num_classes: int = 2
    mask_reader: object = None
    arrays: tuple = None

    def __post_init__(self):
        if len(self.images) != len(self.masks):
            raise ValueError(f"{len(self.images)} images but {len(self.masks)} masks")
        if not self.meta:
            self.meta = [{} for _ in self.images]

    def __len__(self):
        return len(self.images)

    def subset(self, indices):
        """A new set with the pairs at `indices`."""
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        arrays = None if self.arrays is None else tuple(np.asarray(a)[list(indices)] for a in self.arrays)
        return SegmentationSet(pick(self.images), pick(self.masks), pick(self.meta),
                               self.num_classes, self.mask_reader, arrays)

    def read_mask(self, path):
        """Reads one mask as uint8 (H, W): with `mask_reader` if set, else the PNG as 0/1 (two
        classes) or as class labels."""
        if self.mask_reader is not None:
            return self.mask_reader(path)
        return read_mask(path, binary=self.num_classes == 2,
                         num_classes=None if self.num_classes == 2 else self.num_classes)


def resize_pair(image, mask, size, keep_aspect=False):
    """Resizes uint8 image (H, W, C) bilinearly and mask (H, W) by nearest neighbour to `size`.

    With `keep_aspect` the image is scaled to fit inside `size` and zero-padded, centred.

    Returns:
        (image, mask, geometry) where geometry = (scale_y, scale_x, pad_top, pad_left) maps the
        result back to the original pixels.
    """
    height, width = size
    h, w = image.shape[:2]
    if keep_aspect:
        scale = min(height / h, width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        nh, nw = height, width
    img = np.stack([np.asarray(Image.fromarray(image[..., c]).resize((nw, nh), Image.BILINEAR))
                    for c in range(image.shape[-1])], axis=-1)
    msk = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    top, left = (height - nh) // 2, (width - nw) // 2
    if (nh, nw) != (height, width):
        img = np.pad(img, ((top, height - nh - top), (left, width - nw - left), (0, 0)))
        msk = np.pad(msk, ((top, height - nh - top), (left, width - nw - left)))
    return img, msk, (nh / h, nw / w, top, left)


def load_arrays(data, size, channels=1, keep_aspect=False, workers=8):
    """Reads, checks and resizes every pair of a `SegmentationSet` in parallel threads.

    Returns:
        images uint8 (N, H, W, channels), masks uint8 (N, H, W); each pair's original size and
        resize geometry are added to `data.meta` ("original_size", "geometry").
    """
    def one(i):
        image = read_image(data.images[i], channels=channels)
        mask = data.read_mask(data.masks[i])
        check_same_size(image, mask, data.images[i], data.masks[i])
        img, msk, geometry = resize_pair(image, mask, size, keep_aspect)
        data.meta[i].update(original_size=image.shape[:2], geometry=geometry)
        return img, msk

    if len(data) == 0:
        raise ValueError("The data set is empty")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pairs = list(pool.map(one, range(len(data))))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_dataset(images, masks, batch_size=8, augment=None, shuffle=True, seed=0, repeat=False,
                 drop_remainder=None):
    """A seeded, deterministic tf.data pipeline over in-memory arrays.

    Args:
        images: uint8 (N, H, W, C).
        masks: uint8 (N, H, W) or (N, H, W, 1).
        batch_size: batch size.
        augment: None, an augmentation preset name ("wang2023", "cheng2021", ...), a dict or an
            `AugmentConfig`.
        shuffle: reshuffle every epoch (seeded).
        seed: seeds the shuffle and every augmentation draw; the same seed gives the same stream, and
            epoch k's order and draws depend only on the seed and k (`tlunet.data.epochs`), so a
            resumed run sees what an uninterrupted one would.
        repeat: repeat forever (for Keras' `model.fit(steps_per_epoch=...)`; passes then follow one
            long-lived iterator, and a resumed run does not replay them).
        drop_remainder: drop a last partial batch. None (default): False, except for a training
            stream (`shuffle=True`) built inside a tf.distribute strategy's scope (as tlunet's
            runners build theirs), which drops it; see "Under a distribution strategy".

    Under a distribution strategy (a dataset built inside `strategy.scope()`), `batch_size` is the
    global batch, which tf.distribute splits over the replicas, ceil(batch / replicas) to each in
    turn; a replica left without images fails inside the model (BatchNorm's or a convolution's
    shapes). So a shuffled (training) dataset drops each pass's last partial batch, up to
    `batch_size - 1` images an epoch (different ones every epoch; logged when built), and an
    unshuffled one (validation, test) keeps every image, re-cutting its last batches where the
    remainder would leave a replica empty. A `batch_size` that cannot give every replica an
    image, or fewer training images than one batch, is a ValueError.

    Returns:
        `tf.data.Dataset` of (float32 image in [0, 1], float32 mask (…, 1)) batches.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if masks.ndim == images.ndim - 1:
        masks = masks[..., None]
    if images.ndim != 4 or images.shape[:3] != masks.shape[:3]:
        raise ValueError(f"images (N, H, W, C) and masks (N, H, W[, 1]) must agree. "
                         f"Received: images {images.shape}, masks {masks.shape}")
    cfg = get_augment_config(augment)

    def prepare(pair, seeds):
        # Whole batches are augmented at once (one resampling op each), each sample with its seed.
        x = tf.cast(pair[0], tf.float32) / 255.0
        y = tf.cast(pair[1], tf.float32)
        return augment_batch(x, y, seeds, cfg) if cfg != get_augment_config(None) else (x, y)

    return _seeded_batches((images, masks), prepare, batch_size, shuffle, seed, repeat, drop_remainder)


def _seeded_batches(arrays, prepare, batch_size, shuffle, seed, repeat=False, drop_remainder=None):
    """Batches of `arrays`, `prepare(batch, seeds)` mapped in parallel with a deterministic order, and
    prefetched. Each pass over the data is shuffled (seeded) and each sample gets its own
    stateless-RNG seed, both drawn from (seed, pass number) alone (`tlunet.data.epochs`): a run
    resumed at epoch k sees the batches an uninterrupted run would."""
    n = len(arrays[0])
    constants = tuple(tf.constant(np.asarray(a)) for a in arrays)
    clock = EpochClock()

    def one_pass(epoch):
        key = pass_key(seed, epoch)
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=key)
        seeds = tf.random.stateless_uniform([n, 2], seed=key + [0, 1 << 40], minval=None, maxval=None,
                                            dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((order, seeds))

    ds = epoch_numbers(clock, forever=repeat).flat_map(one_pass)
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY if repeat else n))
    if repeat:  # one endless stream: every batch is whole
        ds = ds.batch(batch_size, drop_remainder=bool(drop_remainder))
    else:
        ds = batch_over_replicas(ds, n, batch_size, training=shuffle, drop_remainder=drop_remainder)
    ds = ds.map(lambda index, seeds: prepare(tuple(tf.gather(c, index) for c in constants), seeds),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return attach_clock(ds.prefetch(tf.data.AUTOTUNE), clock)


def make_classification_dataset(frames, labels, size, batch_size=16, augment=None, shuffle=True,
                                seed=0, channels=1, drop_remainder=None):
    """Frames (list of uint8 (H, W, C) arrays of any sizes) and integer labels -> batches of
    (float32 (size..., C) in [0, 1], int32 label), resized bilinearly, augmented image-only.
    `drop_remainder` and batching under a distribution strategy as in `make_dataset`."""
    if len(frames) != len(labels) or not len(frames):
        raise ValueError(f"{len(frames)} frames but {len(labels)} labels")
    images = np.stack([resize_pair(f[..., :channels], np.zeros(f.shape[:2], np.uint8), size)[0]
                       for f in frames])
    cfg = get_augment_config(augment)

    def prepare(pair, seeds):
        x = tf.cast(pair[0], tf.float32) / 255.0
        if cfg != get_augment_config(None):
            x, _ = augment_batch(x, tf.zeros_like(x[..., :1]), seeds, cfg)
        return x, pair[1]

    return _seeded_batches((images, np.asarray(labels, np.int32)), prepare, batch_size, shuffle, seed,
                           drop_remainder=drop_remainder)


# --------------------------------------------------------------------- batches under tf.distribute
def replicas_in_sync():
    """Replicas of the tf.distribute strategy whose scope is open: 1 outside any."""
    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def splits_over_replicas(batch, replicas):
    """Whether a batch of `batch` samples gives each of `replicas` at least one: tf.distribute hands
    ceil(batch / replicas) to one replica after another (6 over 4 replicas: 2, 2, 2, 0)."""
    return batch >= 1 and -(-batch // -(-batch // replicas)) == replicas


def batch_over_replicas(ds, n, batch_size, training, drop_remainder=None, what="images"):
    """`ds`, whose every pass has `n` elements, batched at `batch_size` so that no replica of the
    open distribution strategy is handed an empty batch (`distributed_batching`)."""
    drop_remainder, sizes = distributed_batching(n, batch_size, training, drop_remainder, what)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if sizes is not None:  # batches of these sizes, in this order, every pass
        ds = ds.rebatch(sizes).apply(tf.data.experimental.assert_cardinality(len(sizes)))
    return ds


def distributed_batching(n, batch_size, training, drop_remainder=None, what="images"):
    """How to batch `n` samples at `batch_size` so that, under the open distribution strategy, no
    replica gets an empty batch: (drop_remainder, sizes), where `sizes` (None: uniform batches)
    lists one pass's batch sizes in order. Outside a strategy: (bool(drop_remainder), None).

    `drop_remainder` None drops a training stream's last partial batch under a strategy (logged);
    data kept whole (validation, test, or `drop_remainder=False`) re-cuts its last batches where the
    remainder would leave a replica empty.

    Raises:
        ValueError: `batch_size` leaves a replica empty, fewer training samples than one batch, or
            samples that no cut into batches spreads over every replica.
    """
    replicas = replicas_in_sync()
    if replicas == 1:
        return bool(drop_remainder), None
    if not splits_over_replicas(batch_size, replicas):
        raise ValueError(f"batch_size {batch_size} is the global batch, split over {replicas} replicas "
                         f"ceil({batch_size}/{replicas}) to each in turn, which leaves a replica without "
                         f"{what}; use a multiple of {replicas}")
    rest = n % batch_size
    if training if drop_remainder is None else drop_remainder:
        if n < batch_size:
            raise ValueError(f"{n} training {what}, fewer than one global batch of {batch_size}: under a "
                             f"distribution strategy a partial batch is dropped; use batch_size <= {n}")
        if rest:
            log.warning("%d training %s at a global batch of %d over %d replicas: each epoch leaves out the "
                        "last %d of its order (a partial batch could leave a replica empty)",
                        n, what, batch_size, replicas, rest)
        return True, None
    if rest == 0 or splits_over_replicas(rest, replicas):
        return False, None
    return False, _batches_over_replicas(n, batch_size, replicas, what)


def _batches_over_replicas(n, batch_size, replicas, what):
    """Batch sizes covering `n` samples, each giving every replica one: full batches, then the
    fewest batches of at most `batch_size` (else at most twice that) that re-cut the last ones."""
    for cap in (batch_size, 2 * batch_size):
        sizes = [b for b in range(replicas, cap + 1) if splits_over_replicas(b, replicas)]
        fewest, last = [0], [0]  # the fewest batches that sum to a total, and the last one's size
        for tail in range(n % batch_size, n + 1, batch_size):  # re-cut 0, 1, 2, ... full batches too
            while len(fewest) <= tail:
                total = len(fewest)
                best = min(((fewest[total - b] + 1, -b) for b in sizes
                            if b <= total and fewest[total - b] is not None), default=None)
                fewest.append(best and best[0])
                last.append(best and -best[1])
            if fewest[tail] is not None:
                cut = []
                while tail:
                    cut.append(last[tail])
                    tail -= last[tail]
                return [batch_size] * ((n - sum(cut)) // batch_size) + sorted(cut, reverse=True)
    raise ValueError(f"{n} {what} cannot be cut into batches that give each of the {replicas} replicas one "
                     f"(tf.distribute hands ceil(batch/{replicas}) to each in turn); use fewer replicas")
