"""Reading images and masks from disk, with errors that name the file and the problem."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


class DataError(ValueError):
    """Bad input data; the message names the file and what is wrong with it."""


def read_image(path, channels=1):
    """Reads an image file as uint8 (H, W, channels); channels 1 (grey) or 3 (RGB)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    return _read(path, mode)[..., None] if channels == 1 else _read(path, mode)


def read_mask(path, binary=True, num_classes=None):
    """Reads a mask as uint8 (H, W).

    Args:
        path: PNG (grey or palette) mask file.
        binary: expect only two values {0, v}; returns {0, 1}. Anything else raises `DataError`.
        num_classes: for multi-class masks (binary=False): labels must be < num_classes. Palette
            PNGs give their palette indices, grey PNGs their grey values.
    """
    with _open(path) as im:
        arr = np.asarray(im if im.mode in ("L", "P") else im.convert("L"))
    values = np.unique(arr)
    if binary:
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            raise DataError(f"{path}: expected a binary mask (0 and one other value), found "
                            f"{len(values)} values {values[:6].tolist()}...")
        return (arr > 0).astype(np.uint8)
    if num_classes is not None and values.max() >= num_classes:
        raise DataError(f"{path}: label {int(values.max())} is out of range for "
                        f"num_classes={num_classes}")
    return arr.astype(np.uint8)


def _open(path):
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        im = Image.open(path)
        im.load()  # decode now, so a truncated file fails here and not later inside TF
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from e
    return im


def _read(path, mode):
    with _open(path) as im:
        return np.asarray(im.convert(mode))


def check_same_size(image, mask, image_path, mask_path):
    """Raises `DataError` naming both files if image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                        f"is {mask.shape[1]}x{mask.shape[0]}")
