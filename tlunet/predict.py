"""Folder in -> masks, overlays and (for fetal heads) head circumference in mm."""

import csv
import hashlib
import json
import numbers
import os
import re

import numpy as np
from PIL import Image

from tlunet.biometry import head_circumference
from tlunet.data.folders import list_files
from tlunet.data.io import IMAGE_SUFFIXES, DataError, check_row_fields, csv_rows, positive_number, read_image
from tlunet.data.pipeline import resize_pair
from tlunet.postprocess import PostProcess


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
    with csv_rows(csv_path) as reader:  # Excel's "CSV UTF-8" (a byte-order mark) reads too
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


HC18_SCAN = re.compile(r"^\d+_\d*HC\.png$")  # HC18's scan names (tlunet.data.hc18): 000_HC.png, 010_2HC.png
MANIFEST = ".tlunet-predict.json"  # in the output folder: the files predict wrote there, with their SHA-1
COLUMNS = ("filename", "foreground_fraction", "pixel_size_mm", "hc_mm")  # of predictions.csv


def hc18_annotations(names):
    """The HC18 annotations among the file names `names`: `NNN_HC_Annotation.png` beside its scan
    `NNN_HC.png`, which are outlines, not images to segment. Other names containing `_Annotation`
    (`liver_Annotation_review.png`) are images like any other."""
    present, suffix = set(names), "_Annotation.png"
    return [n for n in names if n.endswith(suffix) and HC18_SCAN.match(n[:-len(suffix)] + ".png")
            and n[:-len(suffix)] + ".png" in present]


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _written_before(out_dir):
    """{path relative to `out_dir`: SHA-1, or None where unknown} of the files earlier runs of predict
    wrote there: those its manifest lists, and the outputs of the rows of a predictions.csv with
    predict's columns (a run made before the manifest existed)."""
    owned = {}
    try:
        with open(os.path.join(out_dir, "predictions.csv"), newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames and reader.fieldnames[0] == "filename" and set(reader.fieldnames) <= set(COLUMNS):
                owned["predictions.csv"] = None
                for row in reader:
                    stem = os.path.splitext(row["filename"] or "")[0]
                    owned.update({f"masks/{stem}.png": None, f"overlays/{stem}.png": None})
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # none, or not predict's: its files count as the user's
    try:
        with open(os.path.join(out_dir, MANIFEST)) as f:
            files = json.load(f)["files"]
        owned.update({k: v for k, v in files.items() if isinstance(k, str) and (v is None or isinstance(v, str))})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none, or unreadable: nothing is known to be predict's
    return owned


def _check_overwrite(out_dir, targets, overwrite):
    """The files earlier runs of predict wrote into `out_dir` (`_written_before`); FileExistsError
    naming the folder and a file when one of `targets` (relative paths) exists and is not one of them
    unchanged: the data's own masks, a hand-corrected mask, a link. With `overwrite`, all are replaced."""
    owned = _written_before(out_dir)
    foreign = []
    for rel in [] if overwrite else targets:
        path = os.path.join(out_dir, *rel.split("/"))
        if os.path.lexists(path) and (rel not in owned or not os.path.isfile(path) or os.path.islink(path) or
                                      owned[rel] not in (None, _sha1(path))):
            foreign.append(path)
    if foreign:
        raise FileExistsError(f"{out_dir}: holds {len(foreign)} file(s) that predict would overwrite and did not write "
                              f"(or that changed since), e.g. {foreign[0]}; choose another output folder, or pass "
                              "--overwrite (overwrite=True in Python) to replace them")
    return owned


def _save(picture, path):
    """Writes the uint8 array `picture` as a PNG at `path`; its SHA-1."""
    Image.fromarray(picture).save(path)
    return _sha1(path)


def _write_manifest(out_dir, files):
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))


def _images_to_segment(input_dir, skipped):
    """The image names of `input_dir` to segment, HC18 annotations left out (and added to `skipped`
    when it is a list); DataError when there are none, or two would write one mask."""
    names = list_files(input_dir, IMAGE_SUFFIXES)
    annotations = hc18_annotations(names)
    if skipped is not None:
        skipped.extend(annotations)
    names = [n for n in names if n not in annotations]
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
    return names


def predict_folder(model, input_dir, out_dir, threshold=0.5, pixel_sizes=None, batch_size=4, largest_component=False,
                   tta=None, overwrite=False, skipped=None, post=None):
    """Segments every image of `input_dir` with a binary tlunet model.

    Writes `out_dir/masks/<stem>.png` (0/255 at the original size), `out_dir/overlays/<stem>.png`
    and `out_dir/predictions.csv` (name, foreground fraction, and head circumference in mm where a
    pixel size is known). HC18 annotations (`NNN_HC_Annotation.png` beside `NNN_HC.png`) are not
    images to segment and are skipped (listed in `skipped`); every other image is segmented.

    Files already in `out_dir` are replaced only if an earlier run of predict wrote them and they
    are unchanged since (`out_dir/.tlunet-predict.json` lists them with their SHA-1, or a
    predictions.csv of predict's names them): the data's own masks, a mask corrected by hand or any
    other file of the user's is refused, unless `overwrite`.

    Every image is read and checked before anything is written, so bad input leaves `out_dir` as
    it was. `predictions.csv` is written last (under a temporary name, then renamed) and an old one
    is removed before the first mask is written: a run that fails midway leaves no
    predictions.csv, so its presence marks a complete run.

    Args:
        model: Keras model with a fixed input size and one output channel.
        input_dir: folder of images.
        out_dir: output folder (created).
        threshold: probability threshold, in (0, 1).
        pixel_sizes: None, a float for every image, or {file name: mm}; each > 0 and finite.
        batch_size: images per forward pass.
        largest_component: keep only the largest connected region of each mask (one head per scan),
            at the image's own size.
        tta: None, or "flip" to average each image's and its mirror's probabilities.
        overwrite: replace files in `out_dir` that predict did not write.
        skipped: a list, to which the names of the HC18 annotations left out are added.
        post: a `tlunet.postprocess.PostProcess` to apply instead of `threshold`, `tta` and
            `largest_component` (which must then be left at their defaults).

    Returns:
        list of row dicts, as written to predictions.csv.

    Raises:
        DataError: no images, two images with one output name (`scan.jpg` and `scan.png`), an
            unreadable image (all of them are named), a bad pixel size.
        FileExistsError: `out_dir` holds a file predict would replace and did not write.
        ValueError: the model is not a 2D model of a fixed input size with one output channel; a bad
            threshold, tta or largest_component, or those beside `post`.
    """
    if not isinstance(model.input_shape, tuple) or len(model.input_shape) != 4 or None in model.input_shape[1:3]:
        raise ValueError(f"predict_folder needs a 2D model with a fixed input size (batch, height, width, channels); "
                         f"{model.name!r} takes {model.input_shape}")
    _, h, w, channels = model.input_shape
    if model.output_shape[-1] != 1:
        raise ValueError(f"predict_folder handles one-channel (binary) models; {model.name!r} has "
                         f"{model.output_shape[-1]} output channels")
    post = _post_process(post, threshold, tta, largest_component)  # checked before any file is read
    pixel_sizes = _check_pixel_sizes(pixel_sizes)
    names = _images_to_segment(input_dir, skipped)
    problems = []
    for name in names:  # read everything first: a bad file late in the folder fails before any output
        try:
            read_image(os.path.join(input_dir, name), channels=channels)
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError(f"{input_dir}: {len(problems)} of {len(names)} images are unreadable, nothing "
                        f"was written: " + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
    targets = [f"{sub}/{os.path.splitext(n)[0]}.png" for n in names for sub in ("masks", "overlays")]
    files = {**_check_overwrite(out_dir, targets + ["predictions.csv"], overwrite), **dict.fromkeys(targets)}
    csv_path = os.path.join(out_dir, "predictions.csv")
    if os.path.lexists(csv_path):
        os.remove(csv_path)  # a stale one must not pass for this run's result if this run fails
    for sub in ("masks", "overlays"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    _write_manifest(out_dir, files)  # first: a run that fails midway leaves its files known as predict's
    rows = []
    for start in range(0, len(names), batch_size):
        batch_names = names[start:start + batch_size]
        originals = [read_image(os.path.join(input_dir, n), channels=channels) for n in batch_names]
        x = np.stack([resize_pair(im, np.zeros(im.shape[:2], np.uint8), (h, w))[0] for im in originals])
        probs = post.probabilities(model, x.astype(np.float32) / 255.0, batch_size)[..., 0]
        for name, image, p in zip(batch_names, originals, probs):
            mask = post.mask_at_size(p, image.shape[:2]).astype(np.uint8)
            stem = os.path.splitext(name)[0]
            files[f"masks/{stem}.png"] = _save(mask * 255, os.path.join(out_dir, "masks", f"{stem}.png"))
            files[f"overlays/{stem}.png"] = _save(overlay(image, mask), os.path.join(out_dir, "overlays", f"{stem}.png"))
            size = pixel_sizes if isinstance(pixel_sizes, float) else (pixel_sizes or {}).get(name)
            hc = head_circumference(mask, size) if size else float("nan")
            rows.append({"filename": name, "foreground_fraction": round(float(mask.mean()), 5),
                         "pixel_size_mm": size if size else "", "hc_mm": "" if np.isnan(hc) else round(hc, 2)})
    _write_rows(csv_path, rows)
    _write_manifest(out_dir, {**files, "predictions.csv": _sha1(csv_path)})
    return rows


def _post_process(post, threshold, tta, largest_component):
    """`post`, or the PostProcess of `predict_folder`'s own arguments (checked)."""
    if post is None:
        return PostProcess(threshold=threshold, tta=tta, largest_component=largest_component)
    if (threshold, tta, largest_component) != (0.5, None, False):
        raise ValueError("predict_folder: pass post, or threshold, tta and largest_component, not both")
    return post


def _write_rows(csv_path, rows):
    """predictions.csv, under a temporary name renamed into place: there only when complete."""
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
