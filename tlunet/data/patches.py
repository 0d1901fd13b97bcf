"""2D image patches with masks in HDF5 files, channels first: `images` (N, 1, H, W) floats in
[0, 1] and `labels` (N, 1, H, W) holding 0/1, as the Medical Segmentation Decathlon lung-tumour
patches (`val_patches.h5`, `test_patches.h5`) are shipped.

The patches carry no patient id: a file is the finest group there is, so splits group by file (the
MSD files hold disjoint patients).
"""

import os

import h5py
import numpy as np

from tlunet.data.io import DataError, check_plain_name
from tlunet.data.pipeline import SegmentationSet

HDF5_SUFFIXES = (".h5", ".hdf5")


def _dataset(h5, key, path):
    """The array `key` of an open HDF5 file, checked to be (N, 1, H, W) and finite."""
    if key not in h5 or not isinstance(h5[key], h5py.Dataset):
        raise DataError(f"{path}: no `{key}` dataset; found {sorted(h5.keys())} (expected `images` and "
                        "`labels`, each (N, 1, H, W))")
    arr = h5[key][()]
    if arr.ndim != 4 or arr.shape[1] != 1:
        raise DataError(f"{path}: `{key}` has shape {arr.shape}; expected (N, 1, H, W), channels first with one "
                        "channel")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{path}: `{key}` holds {arr.dtype} values, not real numbers")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: `{key}` has {int(np.sum(~np.isfinite(arr)))} NaN or infinite values")
    return arr


def read_hdf5_patches(path):
    """(images uint8 (N, H, W, 1) = round(255 x value), masks uint8 (N, H, W) 0/1) of one file.

    Raises:
        DataError naming the file: not HDF5, a missing `images` or `labels` dataset, either not
            (N, 1, H, W), their shapes differing, images outside [0, 1], labels other than 0 and 1.
    """
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        problem = "file not found" if not os.path.isfile(path) else f"not a readable HDF5 file ({e})"
        raise DataError(f"{path}: {problem}") from e
    with h5:
        images, labels = _dataset(h5, "images", path), _dataset(h5, "labels", path)
    if images.shape != labels.shape:
        raise DataError(f"{path}: `images` {images.shape} and `labels` {labels.shape} differ in shape")
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise DataError(f"{path}: `images` values lie in [{lo:g}, {hi:g}]; expected intensities in [0, 1]")
    values = np.unique(labels)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
        raise DataError(f"{path}: `labels` holds [{shown}]; expected 0/1 masks")
    return np.rint(images[:, 0, :, :, None] * 255).astype(np.uint8), labels[:, 0].astype(np.uint8)


def hdf5_files(root, files=None):
    """Paths of the HDF5 files to read: `files` (names inside `root`), else every `*.h5`/`*.hdf5`
    in `root`, sorted; DataError naming the folder or file when there are none or one is missing."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: folder not found")
    if files is None:
        names = sorted(f for f in os.listdir(root) if f.lower().endswith(HDF5_SUFFIXES) and not f.startswith("."))
        if not names:
            raise DataError(f"{root}: no HDF5 files ({', '.join(HDF5_SUFFIXES)})")
    else:
        names = [files] if isinstance(files, str) else list(files)
        if not names:
            raise DataError(f"{root}: `files` is empty")
    for name in names:
        check_plain_name(name, f"{root}: `files`", root)
        if not os.path.isfile(os.path.join(root, name)):
            raise DataError(f"{os.path.join(root, name)}: file not found")
    return [os.path.join(root, name) for name in names]


def hdf5_patch_set(root, files=None):
    """The patches of the HDF5 files in `root` (`hdf5_files`) as a `SegmentationSet` with `arrays`
    (images uint8 (N, H, W, 1), masks uint8 (N, H, W) 0/1), and one group per patch: its file's name.
    Meta per patch: name (`<file stem>_<index>`), file, index.

    Raises:
        DataError: as `hdf5_files` and `read_hdf5_patches`; a file without patches; files whose
            patches differ in size.
    """
    images, masks, meta = [], [], []
    for path in hdf5_files(root, files):
        x, y = read_hdf5_patches(path)
        if not len(x):
            raise DataError(f"{path}: no patches (`images` is {x.shape[0]}x1x{x.shape[1]}x{x.shape[2]})")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{path}: patches of {x.shape[2]}x{x.shape[1]} where {meta[0]['file']} has "
                            f"{images[0].shape[2]}x{images[0].shape[1]}")
        stem, name = os.path.splitext(os.path.basename(path))[0], os.path.basename(path)
        meta += [{"name": f"{stem}_{i:04d}", "file": name, "index": i} for i in range(len(x))]
        images.append(x)
        masks.append(y)
    names = [m["name"] for m in meta]
    data = SegmentationSet(names, names, meta, num_classes=2, arrays=(np.concatenate(images), np.concatenate(masks)))
    return data, [m["file"] for m in meta]
