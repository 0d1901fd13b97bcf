"""Folder in -> masks, overlays and (for fetal heads) head circumference in mm."""

import csv
import os

import numpy as np
from PIL import Image

from tlunet.biometry import head_circumference
from tlunet.data.folders import list_files
from tlunet.data.io import IMAGE_SUFFIXES, DataError, read_image
from tlunet.data.pipeline import resize_pair


def overlay(image, mask, color=(255, 64, 0), alpha=0.45):
    """RGB uint8 overlay of a binary mask on a grey or RGB uint8 image."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    m = mask.astype(bool)
    rgb[m] = ((1 - alpha) * rgb[m] + alpha * np.asarray(color)).astype(np.uint8)
    return rgb


def read_pixel_sizes(csv_path):
    """{file name: pixel size mm} from an HC18-style CSV (`filename`, `pixel size(mm)` columns)."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "filename" not in reader.fieldnames or \
                "pixel size(mm)" not in reader.fieldnames:
            raise DataError(f"{csv_path}: needs columns 'filename' and 'pixel size(mm)'")
        return {row["filename"]: float(row["pixel size(mm)"]) for row in reader}


def predict_folder(model, input_dir, out_dir, threshold=0.5, pixel_sizes=None, batch_size=4):
    """Segments every image of `input_dir` with a binary tlunet model.

    Writes `out_dir/masks/<name>.png` (0/255 at the original size), `out_dir/overlays/<name>.png`
    and `out_dir/predictions.csv` (name, foreground fraction, and head circumference in mm where a
    pixel size is known). Annotation files (`*_Annotation.png`) in the folder are skipped.

    Args:
        model: Keras model with a fixed input size and one output channel.
        input_dir: folder of images.
        out_dir: output folder (created).
        threshold: probability threshold.
        pixel_sizes: None, a float for every image, or {file name: mm}.
        batch_size: images per forward pass.

    Returns:
        list of row dicts, as written to predictions.csv.
    """
    _, h, w, channels = model.input_shape
    if model.output_shape[-1] != 1:
        raise ValueError(f"predict_folder handles one-channel (binary) models; {model.name!r} has "
                         f"{model.output_shape[-1]} output channels")
    names = [f for f in list_files(input_dir, IMAGE_SUFFIXES) if "_Annotation" not in f]
    if not names:
        raise DataError(f"{input_dir}: no images")
    for sub in ("masks", "overlays"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rows = []
    for start in range(0, len(names), batch_size):
        batch_names = names[start:start + batch_size]
        originals = [read_image(os.path.join(input_dir, n), channels=channels) for n in batch_names]
        x = np.stack([resize_pair(im, np.zeros(im.shape[:2], np.uint8), (h, w))[0] for im in originals])
        probs = model.predict(x.astype(np.float32) / 255.0, verbose=0)[..., 0]
        for name, image, p in zip(batch_names, originals, probs):
            prob = np.asarray(Image.fromarray(p.astype(np.float32)).resize(image.shape[1::-1], Image.BILINEAR))
            mask = (prob >= threshold).astype(np.uint8)
            stem = os.path.splitext(name)[0]
            Image.fromarray(mask * 255).save(os.path.join(out_dir, "masks", f"{stem}.png"))
            Image.fromarray(overlay(image, mask)).save(os.path.join(out_dir, "overlays", f"{stem}.png"))
            size = pixel_sizes if isinstance(pixel_sizes, (int, float)) else (pixel_sizes or {}).get(name)
            hc = head_circumference(mask, size) if size else float("nan")
            rows.append({"filename": name, "foreground_fraction": round(float(mask.mean()), 5),
                         "pixel_size_mm": size if size else "", "hc_mm": "" if np.isnan(hc) else round(hc, 2)})
    with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows
