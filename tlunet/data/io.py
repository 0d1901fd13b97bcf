"""Reading images and masks from disk, with errors that name the file and the problem."""

import math
import os
import re

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


class DataError(ValueError):
    """Bad input data; the message names the file and what is wrong with it."""


def read_image(path, channels=1):
    """Reads an image file as uint8 (H, W, channels); channels 1 (grey) or 3 (RGB)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    return _read(path, mode)[..., None] if channels == 1 else _read(path, mode)


def image_channels(paths, max_images=8):
    """3 when any of the first `max_images` images has colour, else 1 (grey, or RGB files whose
    three channels agree, as greyscale scans saved as colour JPEGs do)."""
    for path in list(paths)[:max_images]:
        rgb = _read(path, "RGB").astype(np.int16)
        # JPEG chroma noise moves equal channels by a few levels: colour is a larger mean difference
        if np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean() > 2.0:
            return 3
    return 1


def read_mask(path, binary=True, num_classes=None):
    """Reads a mask as uint8 (H, W).

    Args:
        path: PNG (grey or palette) mask file. A mask with an alpha channel (RGBA, LA) is read
            from its colour channels; one whose labels are only in the alpha channel (constant
            colour, varying transparency), or whose fully transparent pixels have a non-zero
            colour (labels in colour or alpha?), raises `DataError`.
        binary: expect only two values {0, v}; returns {0, 1}. Anything else raises `DataError`.
        num_classes: for multi-class masks (binary=False): labels must be < num_classes. Palette
            PNGs give their palette indices, grey PNGs their grey values.
    """
    with _open(path) as im:
        arr = _mask_array(im, path)
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


def _mask_array(im, path):
    """The label array of an opened mask: palette indices or grey values; for masks with an alpha
    channel, the colour channels once it is clear the labels are not in the alpha channel."""
    if im.mode in ("L", "P"):
        return np.asarray(im)
    colour = np.asarray(im.convert("L"))
    bands = im.getbands()
    if bands[-1] not in ("A", "a"):
        return colour
    alpha = np.asarray(im.getchannel(len(bands) - 1))
    if alpha.min() == 255:  # fully opaque: the colour channels hold the labels
        return colour
    fix = ("save the labels as a grey (mode L) or palette PNG without transparency, e.g. "
           "`PIL.Image.open(path).getchannel('A').save(new_path)` if the alpha channel holds them")
    if colour.min() == colour.max() and alpha.min() != alpha.max():
        raise DataError(f"{path}: the mask's labels are in its alpha (transparency) channel: its "
                        f"colour channels are all {int(colour.min())} while alpha takes "
                        f"{len(np.unique(alpha))} values; {fix}")
    hidden = int(np.sum((alpha == 0) & (colour != 0)))
    if hidden:
        raise DataError(f"{path}: {hidden} fully transparent pixels have a non-zero colour, so the "
                        f"labels may be in the colour or in the alpha channel; {fix}")
    return colour


def _open(path):
    """Opens and decodes an image file, or raises `DataError` naming the file and the problem."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not an image")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise DataError(_too_many_pixels(path, int(found.group(1)) if found else None)) from e
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported against the file
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:  # Pillow only warns up to twice its limit
        im.close()
        raise DataError(_too_many_pixels(path, im.width * im.height, im.size))
    try:
        im.load()  # decode now, so a truncated file fails here and not later inside TF
    except Exception as e:  # noqa: BLE001
        im.close()
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return im


def _too_many_pixels(path, pixels, size=None):
    count = "more pixels than" if pixels is None else f"{pixels:,} pixels" + \
        (f" ({size[0]}x{size[1]})" if size else "") + ", over"
    return (f"{path}: {count} Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS, a guard against decompression bombs); if you trust the "
            "file, raise the limit before reading it: `PIL.Image.MAX_IMAGE_PIXELS = "
            f"{pixels or 'None'}`")


def _read(path, mode):
    with _open(path) as im:
        return np.asarray(im.convert(mode))


def check_same_size(image, mask, image_path, mask_path):
    """Raises `DataError` naming both files if image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                        f"is {mask.shape[1]}x{mask.shape[0]}")


# ------------------------------------------------------------------ CSV rows (HC18, pixel sizes)
def check_row_fields(row, n_columns, csv_path, line):
    """Raises `DataError` for a `csv.DictReader` row with more fields than the header (a `None`
    key: an unquoted decimal comma splits a number in two) or fewer (`None` values), rather than
    reading it shifted."""
    if None in row:
        fields = [v for k, v in row.items() if k is not None] + list(row[None])
        raise DataError(f"{csv_path}, line {line}: {len(fields)} fields where the header has "
                        f"{n_columns}: {','.join(fields)!r} (a decimal comma? write 0.227, not 0,227)")
    if None in row.values():
        raise DataError(f"{csv_path}, line {line}: {sum(v is not None for v in row.values())} "
                        f"field(s) where the header has {n_columns}")


def check_plain_name(name, where, folder):
    """Raises `DataError` unless `name` is a plain file name (no folder part, not absolute, not
    `.`/`..`), so a CSV cannot point outside `folder`."""
    if (not name or name in (".", "..") or os.path.isabs(name) or "/" in name or "\\" in name
            or os.path.basename(name) != name):
        raise DataError(f"{where}: file name {name!r} is not a plain file name; it must name a file "
                        f"directly inside {folder}, with no folder part")


def positive_number(text, where):
    """`text` as a float > 0 and finite, else `DataError` naming `where` and the value."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        hint = " (a decimal comma? write 0.227, not 0,227)" if "," in str(text) else ""
        raise DataError(f"{where} {text!r} is not a number{hint}") from None
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{where} {text!r} must be a positive finite number")
    return value
