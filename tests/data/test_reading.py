"""Real-world files read as they look, through one shared reader: 16-bit and float pixels scaled by
their type's range, masks of every bit depth under one set of value rules, EXIF orientation applied
to images and masks alike; HC18 annotations that are not ellipse outlines, Excel's UTF-8 CSVs and
NIfTI cases with two files are refused or read right, never read wrong silently."""

import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tlunet.data import (DataError, find_hc18, find_nifti_pairs, find_pairs, hc18_set, image_channels,
                         load_arrays, load_hc18_record, read_frames, read_image, read_mask)
from tlunet.data.hc18 import CSV_NAME, read_filled_annotation
from tlunet.data.phantoms import write_hc18_layout
from tlunet.export import read_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HC18_SMALL = os.path.join(REPO, "data", "hc18_small")

_RAMP16 = np.array([[0, 1000, 32768, 65535], [257, 128, 129, 65279]], np.uint16)
_RAMP16_AS_UINT8 = np.array([[0, 4, 128, 255], [1, 0, 1, 254]], np.uint8)  # round(v * 255 / 65535)


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


# ------------------------------------------------------------------------ image pixels by bit depth
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_image_is_scaled_by_its_range_not_clipped(tmp_path, suffix):
    path = _save(tmp_path / f"scan{suffix}", _RAMP16)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_image(path)[..., 0], _RAMP16_AS_UINT8)
    np.testing.assert_array_equal(read_image(path, channels=3), np.repeat(_RAMP16_AS_UINT8[..., None], 3, -1))
    assert image_channels([path]) == 1


def test_16bit_pgm_is_read_as_16bit(tmp_path):
    path = tmp_path / "scan.pgm"  # Pillow opens 16-bit PGM as mode I
    path.write_bytes(b"P5\n4 2\n65535\n" + _RAMP16.astype(">u2").tobytes())
    np.testing.assert_array_equal(read_image(str(path))[..., 0], _RAMP16_AS_UINT8)


def test_float_image_in_unit_range_is_scaled_to_255(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    path = _save(tmp_path / "scan.tif", values)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_image(path)[..., 0], [[0, 64, 128, 255]])


@pytest.mark.parametrize("values, problem", [
    ([[-1000.0, 0.0, 400.0]], r"a float32 image with values in \[-1000, 400\]; float images are read as "
                              r"intensities in \[0, 1\].*save it scaled to \[0, 1\]"),
    ([[0.0, 12.0, 255.0]], r"a float32 image with values in \[0, 255\]"),
    ([[0.0, np.nan, 1.0]], r"1 pixels are NaN or infinite"),
])
def test_float_image_outside_unit_range_is_refused_naming_dtype_and_range(tmp_path, values, problem):
    path = _save(tmp_path / "scan.tif", np.array(values, np.float32))
    with pytest.raises(DataError, match=r"scan\.tif: " + problem):
        read_image(path)


def test_32bit_integer_image_is_refused_naming_its_type_and_range(tmp_path):
    path = _save(tmp_path / "scan.tif", np.array([[0, 12, 255]], np.int32))
    with pytest.raises(DataError, match=r"scan\.tif: an int32 image with values in \[0, 255\]; only unsigned 8- "
                                        r"and 16-bit integers .* save it scaled as an 8- or 16-bit image"):
        read_image(path)


@pytest.mark.parametrize("dtype, name", [(np.int16, "an int16"), (np.uint32, "a uint32")])
def test_signed_or_32bit_tiff_is_refused_naming_its_type(tmp_path, dtype, name):
    tifffile = pytest.importorskip("tifffile")
    path = str(tmp_path / "ct.tif")
    tifffile.imwrite(path, np.array([[-1000 if dtype == np.int16 else 0, 40, 400]], dtype))
    with pytest.raises(DataError, match=rf"ct\.tif: {name} image with values in \[-?\d+, 400\]"):
        read_image(path)


def test_16bit_pairs_train_like_their_8bit_copies(tmp_path):
    """find_pairs + load_arrays (training, evaluation) and export's representative images read a
    16-bit pair as they read its 8-bit copy."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (24, 32)).astype(np.uint8)
    square = np.zeros((24, 32), np.uint8)
    square[6:18, 8:24] = 1
    for root, image, mask in ((tmp_path / "u8", grey, square * 255),
                              (tmp_path / "u16", grey.astype(np.uint16) * 257, square.astype(np.uint16) * 65535)):
        for sub, array in (("images", image), ("masks", mask)):
            (root / sub).mkdir(parents=True)
            _save(root / sub / "1.png", array)
    reads = [load_arrays(find_pairs(str(tmp_path / d)), (16, 16)) for d in ("u8", "u16")]
    for a, b in zip(*reads):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(read_images(str(tmp_path / "u8"), (16, 16)),
                                  read_images(str(tmp_path / "u16"), (16, 16)))


# ----------------------------------------------------------------------- masks of every bit depth
@pytest.mark.parametrize("dtype, values", [(np.uint8, [0, 100, 255]), (np.uint16, [0, 1000, 65535])])
def test_three_valued_mask_is_refused_at_every_bit_depth(tmp_path, dtype, values):
    mask = np.array([values * 2], dtype)
    path = _save(tmp_path / "mask.png", mask)
    shown = ", ".join(str(v) for v in values)
    with pytest.raises(DataError, match=rf"mask\.png: expected a binary mask \(0 and one other value\), "
                                        rf"found 3 values \[{shown}\]"):
        read_mask(path)


@pytest.mark.parametrize("suffix, array", [
    (".png", np.array([[0, 65535, 0]], np.uint16)),
    (".png", np.array([[0, 1, 0]], np.uint16)),
    (".tif", np.array([[0, 1, 0]], np.float32)),
])
def test_binary_mask_reads_at_every_bit_depth(tmp_path, suffix, array):
    np.testing.assert_array_equal(read_mask(_save(tmp_path / f"mask{suffix}", array)), [[0, 1, 0]])


def test_16bit_label_mask_keeps_its_labels(tmp_path):
    path = _save(tmp_path / "labels.png", np.array([[0, 1, 2, 1]], np.uint16))
    np.testing.assert_array_equal(read_mask(path, binary=False, num_classes=3), [[0, 1, 2, 1]])
    with pytest.raises(DataError, match=r"labels\.png: label 2 is out of range for num_classes=2"):
        read_mask(path, binary=False, num_classes=2)


@pytest.mark.parametrize("suffix, array, shown", [
    (".png", np.array([[0, 1, 300]], np.uint16), r"\[300\]"),  # would wrap to 44 in uint8
    (".tif", np.array([[0, 1, 1.5]], np.float32), r"\[1.5\]"),
    (".tif", np.array([[0, -1, 1]], np.float32), r"\[-1\]"),
])
def test_labels_uint8_cannot_hold_are_refused(tmp_path, suffix, array, shown):
    path = _save(tmp_path / f"labels{suffix}", array)
    with pytest.raises(DataError, match=rf"labels\{suffix}: labels {shown} are not integer classes 0..255"):
        read_mask(path, binary=False)


# ---------------------------------------------------------------------------------- EXIF orientation
def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


_CORNER = np.zeros((24, 40), np.uint8)
_CORNER[:8, :8] = 255  # top left as stored


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1))])
def test_exif_orientation_turns_images_and_masks_alike(tmp_path, orientation, turn):
    image = _save(tmp_path / "scan.jpg", _CORNER, exif=_exif(orientation), quality=100)
    mask = _save(tmp_path / "mask.png", _CORNER, exif=_exif(orientation))
    expected = turn(_CORNER)
    assert np.abs(read_image(image)[..., 0].astype(int) - expected).max() < 16  # JPEG ringing only
    np.testing.assert_array_equal(read_mask(mask), expected > 0)
    np.testing.assert_array_equal(read_frames(image)[0, ..., 0] > 128, expected > 0)


def test_exif_rotated_pair_keeps_matching_sizes(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    _save(tmp_path / "images" / "1.jpg", _CORNER, exif=_exif(6), quality=100)
    _save(tmp_path / "masks" / "1.png", np.rot90(_CORNER, -1).copy())  # drawn on the upright image
    images, masks = load_arrays(find_pairs(str(tmp_path)), (40, 24))
    assert images.shape == (1, 40, 24, 1)
    assert np.mean((images[0, ..., 0] > 128) == (masks[0] > 0)) > 0.97


def test_frames_of_a_16bit_multipage_tiff_are_scaled(tmp_path):
    path = str(tmp_path / "stack.tif")
    pages = [Image.fromarray(_RAMP16), Image.fromarray(_RAMP16[::-1].copy())]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    frames = read_frames(path)
    assert frames.shape == (2, 2, 4, 1)
    np.testing.assert_array_equal(frames[1, ..., 0], _RAMP16_AS_UINT8[::-1])


# ---------------------------------------------------------------------------------- HC18 annotations
@pytest.fixture
def hc18(tmp_path):
    return write_hc18_layout(str(tmp_path / "hc18"), n=3, size=(135, 200))


def _annotation(root, name="003_HC"):
    return os.path.join(root, "training_set", f"{name}_Annotation.png")


def _rewrite(path, change):
    outline = np.asarray(Image.open(path)) > 0
    Image.fromarray((change(outline) * 255).astype(np.uint8)).save(path)


def test_filled_hc18_annotation_is_refused(hc18):
    path = _annotation(hc18)
    _rewrite(path, ndimage.binary_fill_holes)
    message = r"003_HC_Annotation\.png: a filled region or a thick band, not an ellipse outline; HC18 annotations are 1-px ellipse outlines"
    with pytest.raises(DataError, match=message):
        read_filled_annotation(path)
    record = [r for r in find_hc18(hc18) if r.annotation == path][0]
    with pytest.raises(DataError, match=message):
        load_hc18_record(record)
    with pytest.raises(DataError, match=message):
        load_arrays(hc18_set(hc18), (64, 96))


def test_filled_annotation_cut_by_the_image_border_is_refused(hc18):
    path = _annotation(hc18)

    def cut(outline):
        filled = ndimage.binary_fill_holes(outline)
        filled[: int(np.argwhere(filled)[:, 0].mean())] = False  # the head's upper half is off the image
        return filled

    _rewrite(path, cut)
    with pytest.raises(DataError, match=r"003_HC_Annotation\.png: a filled region or a thick band, not an ellipse outline"):
        read_filled_annotation(path)


def test_annotation_that_is_not_an_ellipse_is_refused(hc18):
    path = _annotation(hc18)

    def cross(outline):
        out = np.zeros_like(outline)
        out[40:100, 100] = out[70, 60:140] = True
        return out

    _rewrite(path, cross)
    with pytest.raises(DataError, match=r"003_HC_Annotation\.png: (not an ellipse outline: \d+% of its \d+ "
                                        r"pixels lie more than 3 px from the ellipse|no ellipse fits)"):
        read_filled_annotation(path)


def test_thick_ellipse_outline_still_reads(hc18):
    path = _annotation(hc18)
    before = read_filled_annotation(path)
    _rewrite(path, lambda outline: ndimage.binary_dilation(outline, iterations=2))  # a 5-px pen
    after = read_filled_annotation(path)
    assert np.sum(before & after) / np.sum(before | after) > 0.95


def test_outline_cut_by_the_image_border_still_reads(hc18):
    path = _annotation(hc18)
    _rewrite(path, lambda outline: np.where(np.arange(outline.shape[1]) < outline.shape[1] // 2, False, outline))
    assert read_filled_annotation(path).any()


@pytest.mark.parametrize("root", [HC18_SMALL, pytest.param("shared", marks=pytest.mark.realdata)])
def test_every_real_hc18_annotation_is_an_outline(root, request):
    if root == "shared":
        root = os.path.join(request.getfixturevalue("shared_data"), "hc18")
        if not os.path.isdir(root):
            pytest.skip(f"{root} is absent")
    for record in find_hc18(root):
        assert read_filled_annotation(record.annotation).any()


# ------------------------------------------------------------------------------------------ CSVs
def test_csv_saved_as_excel_csv_utf8_reads(hc18):
    path = os.path.join(hc18, CSV_NAME)
    text = open(path, encoding="utf-8").read()
    expected = find_hc18(hc18)
    with open(path, "w", encoding="utf-8-sig", newline="\r\n") as f:  # Excel: BOM and CRLF
        f.write(text)
    assert find_hc18(hc18) == expected


def test_csv_not_in_utf8_is_named(hc18):
    path = os.path.join(hc18, CSV_NAME)
    text = open(path, encoding="utf-8").read() + "Größe.png,0.1,10\n"  # saved as Latin-1 ("ANSI")
    with open(path, "w", encoding="latin-1") as f:
        f.write(text)
    with pytest.raises(DataError, match=rf"{CSV_NAME}: not UTF-8 text .* save it as \"CSV UTF-8\""):
        find_hc18(hc18)


# ------------------------------------------------------------------------------ NIfTI case clashes
nib = pytest.importorskip("nibabel")


def _nifti_root(tmp_path, images, masks):
    for sub, names in (("images", images), ("masks", masks)):
        (tmp_path / sub).mkdir()
        for name in names:
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / sub / name))
    return str(tmp_path)


@pytest.mark.parametrize("images, masks, folder, shown", [
    (["a.nii", "a.nii.gz", "b.nii.gz"], ["a.nii.gz", "b.nii.gz"], "images", "case 'a': a.nii, a.nii.gz"),
    (["a_0000.nii.gz", "a.nii.gz"], ["a.nii.gz"], "images", "case 'a': a.nii.gz, a_0000.nii.gz"),
    (["a_0000.nii.gz"], ["a.nii", "a.nii.gz"], "masks", "case 'a': a.nii, a.nii.gz"),
])
def test_nifti_case_with_two_files_is_refused_listing_them(tmp_path, images, masks, folder, shown):
    root = _nifti_root(tmp_path, images, masks)
    with pytest.raises(DataError, match=rf"{folder}: 1 case\(s\) have more than one file \({shown}\); "
                                        r"keep one file per case"):
        find_nifti_pairs(root)


def test_nifti_upper_case_suffix_is_not_dropped(tmp_path):
    root = _nifti_root(tmp_path, ["a.nii.gz", "B.NII.GZ"], ["a.nii.gz", "B.NII.GZ"])
    assert [case for case, _, _ in find_nifti_pairs(root)] == ["B", "a"]
