"""CT volumes in NIfTI: HU windowing, resampling to a spacing, canonical orientation, patches."""

import os

import nibabel as nib
import numpy as np
import tensorflow as tf
from scipy import ndimage

from tlunet.data.augment import augment_volume
from tlunet.data.epochs import EpochClock, attach_clock
from tlunet.data.folders import list_files
from tlunet.data.io import DataError
from tlunet.data.pipeline import batch_over_replicas


def hu_window(volume, window=(-1250.0, 250.0)):
    """Clips Hounsfield units to `window` and scales to [0, 1] (float32)."""
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"`window` must be (low, high) with high > low. Received: {window}")
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def resample(volume, spacing, target_spacing, order):
    """Resamples a (D, H, W) array from `spacing` to `target_spacing` (order 1 images, 0 masks)."""
    factors = np.asarray(spacing, float) / np.asarray(target_spacing, float)
    if np.allclose(factors, 1.0):
        return volume
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=False)


def load_nifti(image_path, mask_path=None, window=(-1250.0, 250.0), target_spacing=None, num_classes=None):
    """Loads a CT volume (and its mask) in canonical (RAS) orientation as (D, H, W) = (z, y, x).

    Args:
        image_path: .nii / .nii.gz CT in Hounsfield units.
        mask_path: optional label volume of the same grid.
        window: HU window mapped to [0, 1]; None keeps raw values (float32).
        target_spacing: (z, y, x) spacing in mm to resample to, or None.
        num_classes: labels must be < num_classes; None checks only that they are integers in
            0..255 (what uint8 holds).

    Returns:
        dict with "image" float32 (D, H, W), "mask" uint8 (D, H, W) or None, "spacing" (z, y, x).

    Raises:
        DataError: unreadable file, NaN/inf voxels, image and mask on different grids, mask labels
            that are negative, not integers, or out of range.
    """
    def read(path):
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found")
        try:
            img = nib.as_closest_canonical(nib.load(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable NIfTI volume ({type(e).__name__}: {e})") from e
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise DataError(f"{path}: expected a 3-D volume, found shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise DataError(f"{path}: {int(np.sum(~np.isfinite(data)))} voxels are NaN or infinite")
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        return np.transpose(data, (2, 1, 0)), spacing[::-1], img.affine

    image, spacing, affine = read(image_path)
    mask = None
    if mask_path is not None:
        mask, mask_spacing, mask_affine = read(mask_path)
        if mask.shape != image.shape or not np.allclose(affine, mask_affine, atol=1e-3):
            raise DataError(f"{image_path} {image.shape} and its mask {mask_path} {mask.shape} are not "
                            "on the same voxel grid")
        mask = check_labels(mask, mask_path, num_classes)
    if window is not None:
        image = hu_window(image, window)
    if target_spacing is not None:
        image = resample(image, spacing, target_spacing, order=1).astype(np.float32)
        if mask is not None:
            mask = resample(mask, spacing, target_spacing, order=0).astype(np.uint8)
        spacing = tuple(float(s) for s in target_spacing)
    return {"image": image, "mask": mask, "spacing": spacing}


def check_labels(mask, path, num_classes=None):
    """`mask` (float voxels) as uint8 labels, or `DataError` naming `path` and the offending values:
    negative, non-integer (beyond float rounding: 1e-3) or >= num_classes (default 256, the uint8
    range) labels would otherwise wrap or be rounded into other classes silently."""
    limit = 256 if num_classes is None else int(num_classes)
    labels = np.rint(mask)
    problems = [("negative labels", mask < 0), ("non-integer labels", np.abs(mask - labels) > 1e-3),
                (f"labels out of range for num_classes={num_classes}" if num_classes is not None
                 else "labels above 255 (the uint8 range)", labels >= limit)]
    for what, bad in problems:
        if bad.any():
            values = np.unique(mask[bad])
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise DataError(f"{path}: {int(bad.sum())} voxels have {what} ({shown}); a label volume "
                            f"holds integer classes 0..{limit - 1}")
    return labels.astype(np.uint8)


NIFTI_LAYOUTS = {
    "generic": ("images", "masks"),
    "msd": ("imagesTr", "labelsTr"),                     # Medical Segmentation Decathlon / nnU-Net
    "covid19_ct_seg": ("COVID-19-CT-Seg_20cases", "Infection_Mask"),  # Ma et al. (Zenodo 3757476)
}


NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _nifti_stem(name):
    stem = name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]
    return stem[:-5] if stem.endswith("_0000") else stem  # nnU-Net channel suffix


def _volumes_by_case(folder):
    """{case: path} of the volumes in `folder`.

    Raises:
        DataError: two files of one case (`a.nii` and `a.nii.gz`, `a_0000.nii.gz` and
            `a.nii.gz`), listing them all: keeping one would drop the other silently.
    """
    by_case = {}
    for f in list_files(folder, NIFTI_SUFFIXES):
        by_case.setdefault(_nifti_stem(f), []).append(f)
    clashes = {case: names for case, names in by_case.items() if len(names) > 1}
    if clashes:
        shown = "; ".join(f"case {case!r}: {', '.join(names)}" for case, names in sorted(clashes.items()))
        raise DataError(f"{folder}: {len(clashes)} case(s) have more than one file ({shown}); "
                        "keep one file per case")
    return {case: os.path.join(folder, names[0]) for case, names in by_case.items()}


def find_nifti_pairs(root, layout="generic"):
    """CT volumes and label volumes in two folders, matched by name (`images/case1.nii.gz` <->
    `masks/case1.nii.gz`; nnU-Net's `_0000` channel suffix is ignored).

    Args:
        root: the folder holding both sub-folders.
        layout: a key of `NIFTI_LAYOUTS`.

    Returns:
        list of (case, image_path, mask_path), sorted by case.

    Raises:
        DataError: missing folder, no volumes, a volume without a label or a label without a volume,
            two files of one case in a folder.
    """
    if layout not in NIFTI_LAYOUTS:
        raise ValueError(f"Unknown NIfTI layout {layout!r}. Valid: {sorted(NIFTI_LAYOUTS)}")
    folders = [os.path.join(root, d) for d in NIFTI_LAYOUTS[layout]]
    found = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: folder not found (layout {layout!r} expects "
                            f"{' and '.join(NIFTI_LAYOUTS[layout])} under {root})")
        found.append(_volumes_by_case(folder))
    images, masks = found
    if not images:
        raise DataError(f"{folders[0]}: no .nii/.nii.gz volumes")
    lonely = sorted(set(images) ^ set(masks))
    if lonely:
        which = [f"{c} ({'no label' if c in images else 'no volume'})" for c in lonely[:5]]
        raise DataError(f"{root}: unmatched cases: {', '.join(which)}")
    return [(c, images[c], masks[c]) for c in sorted(images)]


def sample_patch(volume, mask, patch_size, rng, foreground_prob=0.33):
    """One random (D, H, W) patch; with probability `foreground_prob` it is centred on a random
    foreground voxel (oversampling rare lesions). Volumes smaller than the patch are zero-padded."""
    patch_size = tuple(int(p) for p in patch_size)
    pad = [(0, max(0, p - s)) for p, s in zip(patch_size, volume.shape)]
    if any(p[1] for p in pad):
        volume, mask = np.pad(volume, pad), np.pad(mask, pad)
    fg = np.argwhere(mask > 0) if rng.random() < foreground_prob else np.zeros((0, 3))
    if len(fg):
        centre = fg[rng.integers(len(fg))]
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch_size, volume.shape)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch_size, volume.shape)]
    sl = tuple(slice(b, b + p) for b, p in zip(start, patch_size))
    return volume[sl], mask[sl]


def make_patch_dataset(volumes, masks, patch_size, batch_size=2, patches_per_volume=4,
                       foreground_prob=0.33, seed=0, augment=True, fixed=False):
    """Random training patches from whole volumes as a tf.data pipeline (one epoch =
    `patches_per_volume` patches from each volume, in a seeded order).

    Args:
        volumes: list of float32 (D, H, W) volumes in [0, 1] (e.g. from `load_nifti`).
        masks: list of uint8 (D, H, W) label volumes.
        patch_size: (d, h, w).
        batch_size: patches per batch.
        patches_per_volume: patches drawn from each volume per epoch.
        foreground_prob: chance that a patch is centred on a foreground voxel.
        seed: seeds patch positions (different every epoch) and augmentation.
        augment: 3D flips + axial rot90 (`augment_volume`); needs cubic-in-plane patches (h == w).
        fixed: the same patches every pass (a validation set whose score can be compared across
            epochs, and is the same after a resume); else new patches every epoch.

    Returns:
        `tf.data.Dataset` of (float32 (B, d, h, w, 1), float32 (B, d, h, w, 1)).
    """
    if len(volumes) != len(masks) or not volumes:
        raise ValueError(f"{len(volumes)} volumes but {len(masks)} masks")
    for i, (v, m) in enumerate(zip(volumes, masks)):
        if v.shape != m.shape:
            raise ValueError(f"volume {i} has shape {v.shape} but its mask {m.shape}")
    clock = EpochClock()  # epoch k's patches and augmentation depend only on (seed, k): resumable

    def generate():
        epoch = clock.take()
        rng = np.random.default_rng([seed, 0 if fixed else epoch])
        order = rng.permutation(np.repeat(np.arange(len(volumes)), patches_per_volume))
        for i in order:
            image, mask = sample_patch(volumes[i], masks[i], patch_size, rng, foreground_prob)
            yield (image[..., None].astype(np.float32), mask[..., None].astype(np.float32),
                   rng.integers(0, 2 ** 62, size=2, dtype=np.int64))

    spec = tf.TensorSpec((*patch_size, 1), tf.float32)
    ds = tf.data.Dataset.from_generator(generate, output_signature=(spec, spec, tf.TensorSpec((2,), tf.int64)))
    # a known length lets Keras count steps (and not warn that the generator "ran out of data")
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(volumes) * patches_per_volume))
    rot90 = patch_size[1] == patch_size[2]

    def prepare(image, mask, seed_pair):  # a named function: AutoGraph mis-parses two lambdas alike
        return augment_volume(image, mask, seed_pair, rot90=rot90) if augment else (image, mask)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # under a distribution strategy no replica may get an empty batch (a BatchNorm on 0 patches fails)
    ds = batch_over_replicas(ds, len(volumes) * patches_per_volume, batch_size, training=not fixed, what="patches")
    return attach_clock(ds.prefetch(tf.data.AUTOTUNE), clock)
