"""Folder in -> masks, overlays and (for fetal heads) head circumference in mm."""

import csv
import numbers
import os

import numpy as np
from PIL import Image

from tlunet.biometry import head_circumference, mask_at_size
from tlunet.data.folders import list_files
from tlunet.data.io import IMAGE_SUFFIXES, DataError, check_row_fields, positive_number, read_image
from tlunet.data.pipeline import resize_pair
from tlunet.inference import IMAGE_TTA, predict_images


def overlay(image, mask, color=(255, 64, 0), alpha=0.45):
    """RGB uint8 overlay of a binary mask on a grey or RGB uint8 image."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    m = mask.astype(bool)
    rgb[m] = ((1 - alpha) * rgb[m] + alpha * np.asarray(color)).astype(np.uint8)
    return rgb


def read_pixel_sizes(csv_path):
    """{file name: pixel size mm} from an HC18-style CSV (`filename`, `pixel size(mm)` columns).

    Raises:
        DataError: missing file or columns, a row with more or fewer fields than the header (a
            decimal comma), a pixel size that is not a number, <= 0, NaN or infinite, two rows for
            one file name; each names the CSV and the line.
    """
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: pixel-size CSV not found")
    sizes, line_of = {}, {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "filename" not in reader.fieldnames or \
                "pixel size(mm)" not in reader.fieldnames:
            raise DataError(f"{csv_path}: needs columns 'filename' and 'pixel size(mm)'; found "
                            f"{reader.fieldnames}")
        for row in reader:
            line = reader.line_num
            where = f"{csv_path}, line {line}"
            check_row_fields(row, len(reader.fieldnames), csv_path, line)
            name = row["filename"]
            if name in line_of:
                raise DataError(f"{csv_path}: {name!r} has two rows, lines {line_of[name]} and {line}")
            line_of[name] = line
            sizes[name] = positive_number(row["pixel size(mm)"], f"{where}: pixel size(mm)")
    return sizes


def _check_pixel_sizes(pixel_sizes):
    """None, a positive finite number (`--pixel-size`) or {name: positive finite number}."""
    if pixel_sizes is None:
        return None
    if isinstance(pixel_sizes, dict):
        return {name: positive_number(size, f"pixel_sizes[{name!r}]") for name, size in pixel_sizes.items()}
    if isinstance(pixel_sizes, bool) or not isinstance(pixel_sizes, numbers.Real):
        raise ValueError("`pixel_sizes` (tlunet predict --pixel-size) must be None, a number of mm "
                         f"or {{file name: mm}}. Received: {pixel_sizes!r}")
    return positive_number(pixel_sizes, "`pixel_sizes` (tlunet predict --pixel-size)")


def predict_folder(model, input_dir, out_dir, threshold=0.5, pixel_sizes=None, batch_size=4, largest_component=False,
                   tta=None):
    """Segments every image of `input_dir` with a binary tlunet model.

    Writes `out_dir/masks/<stem>.png` (0/255 at the original size), `out_dir/overlays/<stem>.png`
    and `out_dir/predictions.csv` (name, foreground fraction, and head circumference in mm where a
    pixel size is known). Annotation files (`*_Annotation.png`) in the folder are skipped.

    Every image is read and checked before anything is written, so bad input leaves `out_dir` as
    it was. `predictions.csv` is written last (under a temporary name, then renamed) and an old one
    is removed before the first mask is written: a run that fails midway leaves no
    predictions.csv, so its presence marks a complete run.

    Args:
        model: Keras model with a fixed input size and one output channel.
        input_dir: folder of images.
        out_dir: output folder (created).
        threshold: probability threshold.
        pixel_sizes: None, a float for every image, or {file name: mm}; each > 0 and finite.
        batch_size: images per forward pass.
        largest_component: keep only the largest connected region of each mask (one head per scan),
            at the image's own size.
        tta: None, or "flip" to average each image's and its mirror's probabilities.

    Returns:
        list of row dicts, as written to predictions.csv.

    Raises:
        DataError: no images, two images with one output name (`scan.jpg` and `scan.png`), an
            unreadable image (all of them are named), a bad pixel size.
    """
    _, h, w, channels = model.input_shape
    if model.output_shape[-1] != 1:
        raise ValueError(f"predict_folder handles one-channel (binary) models; {model.name!r} has "
                         f"{model.output_shape[-1]} output channels")
    if tta not in IMAGE_TTA:  # checked before any file is read
        raise ValueError(f"tta must be None or 'flip'. Received: {tta!r}")
    pixel_sizes = _check_pixel_sizes(pixel_sizes)
    names = [f for f in list_files(input_dir, IMAGE_SUFFIXES) if "_Annotation" not in f]
    if not names:
        raise DataError(f"{input_dir}: no images")
    by_output = {}
    for name in names:  # outputs are named by stem; case-folded, for case-insensitive disks
        by_output.setdefault(os.path.splitext(name)[0].casefold(), []).append(name)
    clashes = [files for files in by_output.values() if len(files) > 1]
    if clashes:
        shown = "; ".join(" and ".join(os.path.join(input_dir, n) for n in files) for files in clashes[:5])
        raise DataError(f"{input_dir}: {len(clashes)} group(s) of images would write the same mask "
                        f"(outputs are named by file stem): {shown}; rename or remove one of each")
    problems = []
    for name in names:  # read everything first: a bad file late in the folder fails before any output
        try:
            read_image(os.path.join(input_dir, name), channels=channels)
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError(f"{input_dir}: {len(problems)} of {len(names)} images are unreadable, nothing "
                        f"was written: " + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
    csv_path = os.path.join(out_dir, "predictions.csv")
    if os.path.lexists(csv_path):
        os.remove(csv_path)  # a stale one must not pass for this run's result if this run fails
    for sub in ("masks", "overlays"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rows = []
    for start in range(0, len(names), batch_size):
        batch_names = names[start:start + batch_size]
        originals = [read_image(os.path.join(input_dir, n), channels=channels) for n in batch_names]
        x = np.stack([resize_pair(im, np.zeros(im.shape[:2], np.uint8), (h, w))[0] for im in originals])
        probs = predict_images(model, x.astype(np.float32) / 255.0, batch_size, tta)[..., 0]
        for name, image, p in zip(batch_names, originals, probs):
            mask = mask_at_size(p, image.shape[:2], threshold, largest=largest_component).astype(np.uint8)
            stem = os.path.splitext(name)[0]
            Image.fromarray(mask * 255).save(os.path.join(out_dir, "masks", f"{stem}.png"))
            Image.fromarray(overlay(image, mask)).save(os.path.join(out_dir, "overlays", f"{stem}.png"))
            size = pixel_sizes if isinstance(pixel_sizes, float) else (pixel_sizes or {}).get(name)
            hc = head_circumference(mask, size) if size else float("nan")
            rows.append({"filename": name, "foreground_fraction": round(float(mask.mean()), 5),
                         "pixel_size_mm": size if size else "", "hc_mm": "" if np.isnan(hc) else round(hc, 2)})
    tmp = csv_path + ".partial"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, csv_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return rows
