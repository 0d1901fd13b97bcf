"""HC18 fetal-head ultrasound, in the challenge's official training-set layout.

`root/training_set/NNN_HC.png` (grey), `root/training_set/NNN_HC_Annotation.png` (1-px ellipse
outline of the skull, 255 on 0), `root/training_set_pixel_size_and_HC.csv` (pixel size in mm, head
circumference in mm). Images `017_HC` and `017_2HC` show the same fetus: splits group by the numeric
prefix. CC BY 4.0 — van den Heuvel et al., PLoS ONE 2018, doi:10.5281/zenodo.1327317.
"""

import csv
import os
import re
from dataclasses import dataclass

import numpy as np
from skimage import draw

from tlunet.biometry import fit_ellipse
from tlunet.data.io import DataError, read_image, read_mask
from tlunet.data.pipeline import SegmentationSet

CSV_NAME = "training_set_pixel_size_and_HC.csv"
_NAME_RE = re.compile(r"^(\d+)_(\d*)HC\.png$")


@dataclass(frozen=True)
class HC18Record:
    """One HC18 image with its annotation and measurements."""

    image: str
    annotation: str
    pixel_size: float
    hc_mm: float
    subject: str


def subject_of(filename):
    """The fetus a file shows: the numeric prefix (`017_2HC.png` -> "017")."""
    m = _NAME_RE.match(os.path.basename(filename))
    if not m:
        raise DataError(f"{filename}: not an HC18 image name (expected NNN_HC.png or NNN_kHC.png)")
    return m.group(1)


def find_hc18(root):
    """Lists the HC18 records under `root` (the folder holding `training_set/` and the CSV).

    Raises:
        DataError: missing folder or CSV, a CSV row whose image or annotation is missing, a bad
            number in the CSV.
    """
    csv_path = os.path.join(root, CSV_NAME)
    folder = os.path.join(root, "training_set")
    if not os.path.isdir(folder):
        raise DataError(f"{root}: no training_set/ folder (expected the official HC18 layout)")
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: file not found (pixel sizes and HC come from it)")
    records = []
    with open(csv_path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                name = row["filename"]
                pixel_size = float(row["pixel size(mm)"])
                hc = float(row["head circumference (mm)"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{csv_path}, line {line}: unreadable row {row} ({e})") from e
            image = os.path.join(folder, name)
            annotation = image.replace(".png", "_Annotation.png")
            for path, what in ((image, "image"), (annotation, "annotation")):
                if not os.path.isfile(path):
                    raise DataError(f"{csv_path}, line {line}: the {what} {path} does not exist")
            records.append(HC18Record(image, annotation, pixel_size, hc, subject_of(name)))
    if not records:
        raise DataError(f"{csv_path}: no rows")
    return records


def fill_annotation(outline, path="annotation"):
    """Filled head mask (uint8 0/1) and ellipse parameters from a 1-px ellipse outline.

    The ellipse is fitted to the outline pixels (the challenge drew the outlines from ellipse
    parameters) and filled.
    """
    points = np.argwhere(np.asarray(outline) > 0)
    if len(points) == 0:
        raise DataError(f"{path}: empty annotation (no outline pixels)")
    fit = fit_ellipse(points)
    if fit is None:
        raise DataError(f"{path}: no ellipse fits the {len(points)} outline pixels")
    (r, c), (a, b), theta = fit["center"], fit["semi_axes"], fit["angle"]
    mask = np.zeros(outline.shape[:2], np.uint8)
    # skimage.draw.ellipse's rotation is counter-clockwise in (row, col); EllipseModel's theta is
    # the angle of the first axis from x towards y (row), i.e. clockwise on screen.
    rr, cc = draw.ellipse(r, c, b, a, shape=mask.shape, rotation=-theta)
    mask[rr, cc] = 1
    return mask, fit


def load_hc18_record(record):
    """(image uint8 HxWx1, filled mask uint8 HxW) of one record."""
    image = read_image(record.image, channels=1)
    mask, _ = fill_annotation(read_mask(record.annotation, binary=True), record.annotation)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{record.image} and {record.annotation} differ in size")
    return image, mask


def read_filled_annotation(path):
    """The filled head mask (uint8 0/1) of an HC18 annotation file, at the file's size."""
    return fill_annotation(read_mask(path, binary=True), path)[0]


def hc18_set(root_or_records):
    """The HC18 images as a `SegmentationSet` whose masks are the filled annotation ellipses.

    Args:
        root_or_records: the HC18 root folder, or records from `find_hc18`/`split_by_subject`.
    """
    records = find_hc18(root_or_records) if isinstance(root_or_records, (str, os.PathLike)) \
        else list(root_or_records)
    meta = [{"pixel_size": r.pixel_size, "hc_mm": r.hc_mm, "subject": r.subject,
             "name": os.path.basename(r.image), "image": r.image, "annotation": r.annotation}
            for r in records]
    return SegmentationSet([r.image for r in records], [r.annotation for r in records], meta,
                           num_classes=2, mask_reader=read_filled_annotation)
