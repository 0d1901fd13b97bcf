"""Reading images, masks and CSV files from disk, with errors that name the file and the problem.

Every tlunet reader of such files goes through these functions, so training, evaluation,
prediction and export read a file alike.
"""

import contextlib
import csv
import math
import os
import re

import numpy as np
from PIL import Image, ImageOps, ImageSequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


class DataError(ValueError):
    """Bad input data; the message names the file and what is wrong with it."""


def read_image(path, channels=1):
    """Reads an image file as uint8 (H, W, channels); channels 1 (grey) or 3 (RGB).

    The image is read as it looks: EXIF orientation applied, and deeper pixels scaled to 0-255 by
    their type's range (see `image_pixels`), so every reader of image files sees the same values.

    Raises:
        DataError: unreadable file, or pixels with no one right scaling (see `image_pixels`).
    """
    mode = _grey_or_rgb(channels)
    with _open(path) as im:
        return _pixels(im, path, mode)


def read_image_frames(path, channels=1):
    """Every frame of an image file (a GIF, a multi-page TIFF; one for other files), each read as
    `read_image` reads a file: a list of uint8 (H, W, channels) arrays."""
    mode = _grey_or_rgb(channels)
    with _open(path) as im:
        try:
            return [_pixels(frame, path, mode) for frame in ImageSequence.Iterator(im)]
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a later frame that fails to decode
            raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def image_pixels(im, path, channels=1):
    """uint8 (H, W, channels) pixels of an opened PIL image, upright and scaled to 0-255.

    8-bit images keep their values (colour is turned grey by PIL's luma, grey repeated for RGB).
    16-bit integers (PIL modes I;16*, and I from PNG/PGM, whose deepest integers are 16-bit) are
    scaled by their type's range: round(v * 255 / 65535), never clipped. Floats (mode F) in
    [0, 1] are scaled by 255.

    Raises:
        DataError naming `path`: floats outside [0, 1], signed or 32-bit integers (Hounsfield
        units, 0-255 floats: no one scaling is right for all, so the file must say it), NaN or
        infinite pixels.
    """
    return _pixels(im, path, _grey_or_rgb(channels))


def _grey_or_rgb(channels):
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    return mode


def _pixels(im, path, mode):
    """uint8 (H, W, 1) for mode "L", (H, W, 3) for "RGB": `image_pixels` with a PIL mode."""
    im = upright(im)
    if im.mode in _DEEP_MODES:
        im = Image.fromarray(_deep_to_uint8(im, path))
    arr = np.asarray(im.convert(mode))
    return arr[..., None] if mode == "L" else arr


# PIL modes with more than 8 bits per pixel: `convert("L")` clips them to 255 instead of scaling.
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _deep_to_uint8(im, path):
    """uint8 grey of a 16-bit integer or float image, by the rules of `image_pixels`."""
    arr = np.asarray(im)
    if im.mode == "F":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: {int(np.sum(~np.isfinite(arr)))} pixels are NaN or infinite")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{path}: a float32 image with values in [{lo:g}, {hi:g}]; float images "
                            "are read as intensities in [0, 1], and other ranges (Hounsfield units, "
                            "0-255 floats) have no one right scaling: save it scaled to [0, 1], or as "
                            "an 8- or 16-bit image")
        return np.rint(arr * 255).astype(np.uint8)
    lo, hi, stored = int(arr.min()), int(arr.max()), _integer_type(im)
    if stored != "uint16" or lo < 0 or hi > 65535:
        raise DataError(f"{path}: {'an' if stored[0] == 'i' else 'a'} {stored} image with values in [{lo}, {hi}]; only unsigned 8- and "
                        "16-bit integers and [0, 1] floats have one right scaling to 0-255 (signed or "
                        "32-bit values, such as Hounsfield units, need a window): save it scaled as an "
                        "8- or 16-bit image")
    # integer rounding of v * 255 / 65535 (= v / 257; never a tie, so no rounding bias)
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _integer_type(im):
    """The stored type of an integer image (PIL mode I;16* or I), as numpy names it: uint16 for
    I;16 modes and PNG/PGM files (whose deepest integers are 16-bit), else from a TIFF's
    BitsPerSample and SampleFormat tags (what TIFF assumes where they are missing)."""
    if im.mode.startswith("I;16") or im.format in ("PNG", "PPM"):
        return "uint16"
    tags = getattr(im, "tag_v2", {})
    bits, sample_format = tags.get(258, 32), tags.get(339, 1)  # TIFF's default SampleFormat: unsigned
    bits = bits[0] if isinstance(bits, tuple) else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    return f"{'u' if sample_format == 1 else ''}int{bits}"


def upright(im):
    """`im` turned as its EXIF Orientation tag says (a camera's or phone's rotated JPEG), or `im`
    itself when it has no such tag."""
    if im.getexif().get(_ORIENTATION, 1) in (0, 1):
        return im
    return ImageOps.exif_transpose(im)


_ORIENTATION = 0x0112


def image_channels(paths, max_images=8):
    """3 when any of the first `max_images` images has colour, else 1 (grey, or RGB files whose
    three channels agree, as greyscale scans saved as colour JPEGs do)."""
    for path in list(paths)[:max_images]:
        rgb = read_image(path, channels=3).astype(np.int16)
        # JPEG chroma noise moves equal channels by a few levels: colour is a larger mean difference
        if np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean() > 2.0:
            return 3
    return 1


def read_mask(path, binary=True, num_classes=None):
    """Reads a mask as uint8 (H, W), upright (EXIF orientation applied, as to images).

    Masks of every bit depth (8-bit, 16-bit, float) follow the same rules on their stored values,
    which are never scaled.

    Args:
        path: PNG (grey or palette) mask file. A mask with an alpha channel (RGBA, LA) is read
            from its colour channels; one whose labels are only in the alpha channel (constant
            colour, varying transparency), or whose fully transparent pixels have a non-zero
            colour (labels in colour or alpha?), raises `DataError`.
        binary: expect exactly 0 and one other value (or a single value); returns {0, 1}. More
            values raise `DataError` naming the file and the values.
        num_classes: for multi-class masks (binary=False): labels must be < num_classes. Palette
            PNGs give their palette indices, grey PNGs their grey values. Labels that are not
            integers 0..255 (what uint8 holds) raise `DataError`.
    """
    with _open(path) as im:
        if im.info.get("tlunet_16bit_colour"):  # its labels would be cut to their high byte
            raise DataError(f"{path}: a 16-bit {im.mode} mask, which Pillow reads only to its high byte (labels "
                            "0-255 would all read 0); save the mask as 8- or 16-bit grey, or 8-bit colour")
        arr = _mask_array(upright(im), path)
    values = np.unique(arr)
    if binary:
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            raise DataError(f"{path}: expected a binary mask (0 and one other value), found "
                            f"{len(values)} values {_shown(values)}")
        return (arr > 0).astype(np.uint8)
    bad = values[(values < 0) | (values > 255) | (values != np.rint(values))]
    if len(bad):
        raise DataError(f"{path}: labels {_shown(bad)} are not integer classes 0..255")
    if num_classes is not None and values.max() >= num_classes:
        raise DataError(f"{path}: label {int(values.max())} is out of range for "
                        f"num_classes={num_classes}")
    return arr.astype(np.uint8)


def _shown(values, limit=6):
    """`values` as a short list for a message: the first `limit`, then "..." if there are more."""
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _mask_array(im, path):
    """The label array of an opened mask: palette indices, grey values (any bit depth, unscaled);
    for masks with an alpha channel, the colour channels once it is clear the labels are not in
    the alpha channel."""
    if im.mode in _DEEP_MODES:
        arr = np.asarray(im)
        if im.mode == "F" and not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: {int(np.sum(~np.isfinite(arr)))} mask pixels are NaN or infinite")
        return arr
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
        hint = ("; tlunet reads 8- and 16-bit integer and float32 TIFFs (save float64 or float16 data as float32)"
                if str(path).lower().endswith((".tif", ".tiff")) else "")
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}){hint}") from e
    # Pillow keeps only the high byte of 16-bit colour and grey+alpha pixels: say so before decoding
    im.info["tlunet_16bit_colour"] = im.mode not in ("I", "F") and not im.mode.startswith("I;16") and any(
        ";16" in str(tile[3]) for tile in getattr(im, "tile", []) or [])
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


def check_same_size(image, mask, image_path, mask_path):
    """Raises `DataError` naming both files if image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                        f"is {mask.shape[1]}x{mask.shape[0]}")


# ------------------------------------------------------------------ CSV rows (HC18, pixel sizes)
@contextlib.contextmanager
def csv_rows(path):
    """A `csv.DictReader` over the UTF-8 CSV file `path`, with a byte-order mark dropped (Excel's
    "CSV UTF-8" starts with one, which would otherwise stick to the first column's name).

    Raises:
        DataError: the file is not UTF-8 text (raised while its rows are read).
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            yield csv.DictReader(f)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} cannot be "
                            "decoded); save it as \"CSV UTF-8\"") from e


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
