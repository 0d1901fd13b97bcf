"""HC18 fetal-head ultrasound, in the challenge's official training-set layout.

`root/training_set/NNN_HC.png` (grey), `root/training_set/NNN_HC_Annotation.png` (1-px ellipse
outline of the skull, 255 on 0), `root/training_set_pixel_size_and_HC.csv` (pixel size in mm, head
circumference in mm). Images `017_HC` and `017_2HC` show the same fetus: splits group by the numeric
prefix. CC BY 4.0 — van den Heuvel et al., PLoS ONE 2018, doi:10.5281/zenodo.1327317.
"""

import os
import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import draw

from tlunet._suggest import did_you_mean_parent
from tlunet.biometry import fit_ellipse
from tlunet.data.io import (IMAGE_SUFFIXES, DataError, check_plain_name, check_row_fields, csv_rows,
                            positive_number, read_image, read_mask)
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


def _expected_layout(root):
    # One line of what find_hc18 reads, so a wrong folder is fixed without opening the docs.
    return (f"expected the official HC18 layout: {os.path.join(root, 'training_set')}/ (NNN_HC.png images and "
            f"NNN_HC_Annotation.png outlines) and {os.path.join(root, CSV_NAME)}")


def find_hc18(root):
    """Lists the HC18 records under `root` (the folder holding `training_set/` and the CSV).

    The CSV drives: one record per row, in the CSV's order. Every image in `training_set/` must
    have exactly one row (annotation files `*_Annotation.png` are not images; other files, e.g.
    notes, are ignored).

    Raises:
        DataError: missing folder or CSV, missing columns, a row whose image or annotation is
            missing, a file name that is not a plain name inside `training_set/`, a bad number
            (not a number, a decimal comma, <= 0, NaN or infinite), two rows for one file, an
            image without a row.
    """
    csv_path = os.path.join(root, CSV_NAME)
    folder = os.path.join(root, "training_set")
    if not os.path.isdir(folder):
        problem = "no training_set/ folder" if os.path.isdir(root) else "folder not found"
        raise DataError(f"{root}: {problem}; {_expected_layout(root)}"
                        f"{did_you_mean_parent(root, ('training_set',), ('training_set', CSV_NAME))}")
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: file not found (pixel sizes and HC come from it); {_expected_layout(root)}")
    records, line_of = [], {}
    with csv_rows(csv_path) as reader:
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {missing}; found {reader.fieldnames}")
        for row in reader:
            line = reader.line_num
            check_row_fields(row, len(reader.fieldnames), csv_path, line)
            name = row["filename"]
            where = f"{csv_path}, line {line}"
            check_plain_name(name, where, folder)
            if name in line_of:
                raise DataError(f"{csv_path}: {name!r} has two rows, lines {line_of[name]} and {line}")
            line_of[name] = line
            pixel_size = positive_number(row["pixel size(mm)"], f"{where}: pixel size(mm)")
            hc = positive_number(row["head circumference (mm)"], f"{where}: head circumference (mm)")
            if not _NAME_RE.match(name):
                raise DataError(f"{where}: {name!r} is not an HC18 image name (expected NNN_HC.png or "
                                "NNN_kHC.png)")
            image = os.path.join(folder, name)
            annotation = os.path.join(folder, name[:-len(".png")] + "_Annotation.png")
            for path, what in ((image, "image"), (annotation, "annotation")):
                if os.path.isdir(path):
                    raise DataError(f"{where}: the {what} {path} is a directory, not an image")
                if not os.path.isfile(path):
                    raise DataError(f"{where}: the {what} {path} does not exist")
            records.append(HC18Record(image, annotation, pixel_size, hc, subject_of(name)))
    if not records:
        raise DataError(f"{csv_path}: no rows")
    unlisted = sorted(f for f in os.listdir(folder)
                      if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
                      and not f[:f.rindex(".")].endswith("_Annotation") and f not in line_of)
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        raise DataError(f"{csv_path}: {len(unlisted)} image(s) in {folder} have no row: {shown} "
                        "(add their rows, or move them out of training_set/)")
    return records


_COLUMNS = ("filename", "pixel size(mm)", "head circumference (mm)")


def fill_annotation(outline, path="annotation"):
    """Filled head mask (uint8 0/1) and ellipse parameters from a 1-px ellipse outline.

    The ellipse is fitted to the outline pixels (the challenge drew the outlines from ellipse
    parameters) and filled.

    Raises:
        DataError naming `path`: no outline pixels, no ellipse fits them, or they are not an
            ellipse outline (`check_outline`: a filled region, or pixels off any ellipse).
    """
    outline = np.asarray(outline) > 0
    points = np.argwhere(outline)
    if len(points) == 0:
        raise DataError(f"{path}: empty annotation (no outline pixels)")
    fit = fit_ellipse(points)
    if fit is None:
        if _solid(outline):
            raise DataError(_filled_message(path))
        raise DataError(f"{path}: no ellipse fits the {len(points)} outline pixels")
    check_outline(outline, points, fit, path)
    (r, c), (a, b), theta = fit["center"], fit["semi_axes"], fit["angle"]
    mask = np.zeros(outline.shape[:2], np.uint8)
    # skimage.draw.ellipse's rotation is counter-clockwise in (row, col); EllipseModel's theta is
    # the angle of the first axis from x towards y (row), i.e. clockwise on screen.
    rr, cc = draw.ellipse(r, c, b, a, shape=mask.shape, rotation=-theta)
    mask[rr, cc] = 1
    return mask, fit


# An outline pixel further than this from the fitted ellipse is off it; an outline drawn a few
# pixels thick stays within it, the inside of a filled region does not.
_OFF_ELLIPSE_PX = 3.0
_MAX_OFF_FRACTION = 0.1


def check_outline(outline, points, fit, path):
    """Raises `DataError` naming `path` unless the annotation's pixels are an ellipse outline (one
    drawn a few pixels thick passes): a filled region (fitting its pixels gives a smaller head) or
    pixels off the ellipse fitted to them (over a tenth more than 3 px away) are refused.

    Args:
        outline: bool (H, W) annotation pixels.
        points: their (row, col) coordinates.
        fit: `fit_ellipse(points)`.
        path: the file, for the message.
    """
    off = float(np.mean(_distance_to_ellipse(points, fit) > _OFF_ELLIPSE_PX))
    if _solid(outline) or (off > _MAX_OFF_FRACTION and _mostly_interior(outline)):
        raise DataError(_filled_message(path))
    if off > _MAX_OFF_FRACTION:
        raise DataError(f"{path}: not an ellipse outline: {off:.0%} of its {len(points)} pixels lie "
                        f"more than {_OFF_ELLIPSE_PX:g} px from the ellipse fitted to them; HC18 "
                        "annotations are ellipse outlines of the skull")


def _filled_message(path):
    return (f"{path}: a filled region or a thick band, not an ellipse outline; HC18 annotations are 1-px ellipse "
            "outlines of the skull (tlunet fills them itself), and a filled one would be read as a "
            "smaller head (about half the area)")


def _mostly_interior(outline):
    """True when most pixels have all four neighbours set: inside a region, not on its edge."""
    return ndimage.binary_erosion(outline).sum() > 0.5 * outline.sum()


def _solid(outline):
    """True for a filled shape: mostly interior pixels, and no background enclosed (a thick
    outline encloses the head)."""
    return _mostly_interior(outline) and ndimage.binary_fill_holes(outline).sum() == outline.sum()


def _distance_to_ellipse(points, fit):
    """Distance of each (row, col) point to the ellipse `fit` along the ray from its centre
    (at least the normal distance, and close to it for head-like ellipses)."""
    (r, c), (a, b), theta = fit["center"], fit["semi_axes"], fit["angle"]
    x, y = points[:, 1] - c, points[:, 0] - r
    u = (x * np.cos(theta) + y * np.sin(theta)) / a  # in units of the semi-axes
    v = (-x * np.sin(theta) + y * np.cos(theta)) / b
    rho = np.maximum(np.hypot(u, v), 1e-9)  # 1 on the ellipse
    d = np.hypot(x, y)
    return np.abs(d - d / rho)


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
