"""Hostile inputs to the data readers, `predict_folder` and the exported SavedModel: each is refused
with an error naming the file (and line, key or value) and the problem, never read wrong silently."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tlunet
from tlunet.data import DataError, find_hc18, find_pairs, list_files, load_nifti, read_image, read_mask
from tlunet.data.hc18 import CSV_NAME
from tlunet.data.phantoms import write_hc18_layout
from tlunet.export import export_savedmodel
from tlunet.predict import predict_folder, read_pixel_sizes

nib = pytest.importorskip("nibabel")


def _png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return str(path)


# ------------------------------------------------------------------------------------ HC18 CSV
@pytest.fixture
def hc18(tmp_path):
    """A 3-scan HC18 layout; CSV line 2 is 001_HC.png, line 3 001_2HC.png, line 4 003_HC.png."""
    return write_hc18_layout(str(tmp_path / "hc18"), n=3, size=(40, 60))


def _set_line(root, number, text):
    path = os.path.join(root, CSV_NAME)
    lines = open(path).read().splitlines()
    if number > len(lines):
        lines.append(text)
    else:
        lines[number - 1] = text
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _csv_error(line):
    return rf"{CSV_NAME}, line {line}: "


@pytest.mark.parametrize("pixel_size, problem", [
    ("0", "'0' must be a positive finite number"),
    ("-0.2", "'-0.2' must be a positive finite number"),
    ("nan", "'nan' must be a positive finite number"),
    ("inf", "'inf' must be a positive finite number"),
    ('"0,227"', r"'0,227' is not a number \(a decimal comma\?"),
    ("0,227", r"4 fields where the header has 3: '001_2HC.png,0,227,9.43' \(a decimal comma\?"),
])
def test_hc18_bad_pixel_size_names_csv_line_and_value(hc18, pixel_size, problem):
    _set_line(hc18, 3, f"001_2HC.png,{pixel_size},9.43")
    with pytest.raises(DataError, match=_csv_error(3) + "(pixel size\\(mm\\) )?" + problem):
        find_hc18(hc18)


@pytest.mark.parametrize("hc", ["0", "-5", "nan"])
def test_hc18_bad_circumference_names_csv_line_and_value(hc18, hc):
    _set_line(hc18, 4, f"003_HC.png,0.14,{hc}")
    with pytest.raises(DataError, match=_csv_error(4) + rf"head circumference \(mm\) '{hc}' must be a positive"):
        find_hc18(hc18)


def test_hc18_image_without_row_is_listed(hc18):
    _set_line(hc18, 3, "")  # drop 001_2HC.png's row (a blank line: csv skips it)
    for extra in ("007_HC.png", "008_HC.png"):
        _png(os.path.join(hc18, "training_set", extra), np.zeros((40, 60)))
    _png(os.path.join(hc18, "training_set", "009_HC_Annotation.png"), np.zeros((40, 60)))  # not an image
    with pytest.raises(DataError, match=rf"{CSV_NAME}: 3 image\(s\) in .*training_set have no row: "
                                        r"001_2HC.png, 007_HC.png, 008_HC.png \(add their rows"):
        find_hc18(hc18)


def test_hc18_duplicate_row_names_file_and_both_lines(hc18):
    _set_line(hc18, 5, "001_HC.png,0.1,7.26")
    with pytest.raises(DataError, match=rf"{CSV_NAME}: '001_HC.png' has two rows, lines 2 and 5"):
        find_hc18(hc18)


@pytest.mark.parametrize("name", ["../../001_HC.png", "../hc18/training_set/001_HC.png", "ABSOLUTE",
                                  "sub/001_HC.png", "sub\\001_HC.png", ".."])
def test_hc18_file_name_escaping_the_folder_is_refused(hc18, name):
    if name == "ABSOLUTE":  # the real file, by absolute path: still not a plain name
        name = os.path.join(hc18, "training_set", "001_HC.png")
    _set_line(hc18, 2, f"{name},0.1,7.26")
    with pytest.raises(DataError, match=_csv_error(2) + re.escape(f"file name {name!r} is not a plain file name")):
        find_hc18(hc18)


def test_hc18_valid_layout_still_reads(hc18):
    assert [os.path.basename(r.image) for r in find_hc18(hc18)] == ["001_HC.png", "001_2HC.png", "003_HC.png"]


_HC18_LAYOUT = r"expected the official HC18 layout: {0}/training_set/ \(NNN_HC\.png images and " \
               r"NNN_HC_Annotation\.png outlines\) and {0}/" + re.escape(CSV_NAME)


def test_hc18_inner_folder_names_the_layout_and_its_parent(hc18):
    inner = os.path.join(hc18, "training_set")
    with pytest.raises(DataError, match=rf"^{re.escape(inner)}: no training_set/ folder; "
                                        rf"{_HC18_LAYOUT.format(re.escape(inner))}; did you mean the folder "
                                        rf"{re.escape(hc18)}\?$"):
        tlunet.data.hc18_set(inner)


def test_hc18_wrong_folder_names_the_layout_without_a_guess(tmp_path):
    empty, gone = str(tmp_path / "empty"), str(tmp_path / "gone")
    os.mkdir(empty)
    for root, problem in ((empty, "no training_set/ folder"), (gone, "folder not found")):
        with pytest.raises(DataError, match=rf"^{re.escape(root)}: {problem}; "
                                            rf"{_HC18_LAYOUT.format(re.escape(root))}$"):
            find_hc18(root)


def test_hc18_missing_csv_names_the_layout(hc18):
    os.remove(os.path.join(hc18, CSV_NAME))
    with pytest.raises(DataError, match=rf"{CSV_NAME}: file not found \(pixel sizes and HC come from it\); "
                                        rf"{_HC18_LAYOUT.format(re.escape(hc18))}$"):
        find_hc18(hc18)


# ------------------------------------------------------------------------------------ NIfTI masks
def _nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return str(path)


@pytest.mark.parametrize("value, kwargs, problem", [
    (-1.0, {}, r"1 voxels have negative labels \(-1\)"),
    (1.5, {}, r"1 voxels have non-integer labels \(1.5\)"),
    (0.4, {}, r"1 voxels have non-integer labels \(0.4\)"),
    (300.0, {}, r"1 voxels have labels above 255 \(the uint8 range\) \(300\); .* 0..255"),
    (2.0, {"num_classes": 2}, r"1 voxels have labels out of range for num_classes=2 \(2\); .* 0..1"),
])
def test_nifti_bad_labels_name_file_and_values(tmp_path, value, kwargs, problem):
    ct = _nifti(tmp_path / "ct.nii.gz", np.zeros((6, 6, 3), np.float32))
    labels = np.zeros((6, 6, 3), np.float32)
    labels[2, 2, 1] = value
    seg = _nifti(tmp_path / "seg.nii.gz", labels)
    with pytest.raises(DataError, match=r"seg\.nii\.gz: " + problem):
        load_nifti(ct, seg, **kwargs)


def test_nifti_integer_labels_within_range_read(tmp_path):
    ct = _nifti(tmp_path / "ct.nii.gz", np.zeros((6, 6, 3), np.float32))
    labels = np.zeros((6, 6, 3), np.float32)
    labels[1, 1, 1], labels[2, 2, 2] = 1.0, 2.0
    out = load_nifti(ct, _nifti(tmp_path / "seg.nii.gz", labels), num_classes=3)
    assert out["mask"].dtype == np.uint8 and sorted(np.unique(out["mask"])) == [0, 1, 2]


# ------------------------------------------------------------------------------------ image files
def _rgba(colour, alpha, mode="RGBA"):
    if mode == "LA":
        return np.stack([colour, alpha], -1).astype(np.uint8)
    return np.stack([colour, colour, colour, alpha], -1).astype(np.uint8)


_SQUARE = np.zeros((8, 8), np.uint8)
_SQUARE[2:6, 2:6] = 255


@pytest.mark.parametrize("mode, colour", [("RGBA", 0), ("RGBA", 255), ("LA", 0), ("LA", 255)])
@pytest.mark.parametrize("binary", [True, False])
def test_mask_with_labels_only_in_alpha_is_refused(tmp_path, mode, colour, binary):
    path = _png(tmp_path / "alpha.png", _rgba(np.full((8, 8), colour), _SQUARE, mode))
    with pytest.raises(DataError, match=rf"alpha\.png: the mask's labels are in its alpha \(transparency\) "
                                        rf"channel: its colour channels are all {colour} .*getchannel\('A'\)"):
        read_mask(path, binary=binary)


def test_mask_with_transparent_non_black_pixels_is_ambiguous(tmp_path):
    path = _png(tmp_path / "inverted.png", _rgba(255 - _SQUARE, _SQUARE))  # white but transparent background
    with pytest.raises(DataError, match=r"inverted\.png: 48 fully transparent pixels have a non-zero colour"):
        read_mask(path)


@pytest.mark.parametrize("alpha", [255, "transparent_black_background"])
def test_rgba_mask_read_from_its_colour_channels(tmp_path, alpha):
    a = np.full((8, 8), 255) if alpha == 255 else _SQUARE
    path = _png(tmp_path / "ok.png", _rgba(_SQUARE, a))
    np.testing.assert_array_equal(read_mask(path), _SQUARE > 0)


@pytest.mark.parametrize("side, pixels", [(15, 225), (30, 900)])  # PIL warns for 225, raises for 900
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_image_over_pixel_limit_names_file_count_and_limit(tmp_path, monkeypatch, side, pixels, reader):
    path = _png(tmp_path / "huge.png", np.zeros((side, side)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    with pytest.warns(Image.DecompressionBombWarning) if pixels < 400 else _no_warning():
        with pytest.raises(DataError, match=rf"huge\.png: {pixels} pixels.* over Pillow's limit of 200 pixels "
                                            rf".*PIL.Image.MAX_IMAGE_PIXELS = {pixels}"):
            reader(path)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_directory_named_like_an_image_is_named(tmp_path, reader):
    (tmp_path / "scan.png").mkdir()
    with pytest.raises(DataError, match=r"scan\.png: is a directory, not an image"):
        reader(str(tmp_path / "scan.png"))


def test_folder_listing_refuses_a_directory_named_like_an_image(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        _png(tmp_path / sub / "1.png", _SQUARE)
    (tmp_path / "images" / "scan.png").mkdir()
    match = r"images.scan\.png: is a directory, not an image"
    with pytest.raises(DataError, match=match):
        list_files(str(tmp_path / "images"), (".png",))
    with pytest.raises(DataError, match=match):
        find_pairs(str(tmp_path))


def _pairs_folder(root):
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub))
        _png(os.path.join(root, sub, "1.png"), _SQUARE)
    return str(root)


@pytest.mark.parametrize("inner", ["images", "masks", "images/"])
def test_pairs_inner_folder_names_the_layout_and_its_parent(tmp_path, inner):
    """`--data my_data/images` used to say `my_data/images/images: folder not found`."""
    data = _pairs_folder(tmp_path / "my_data")
    given = os.path.join(data, inner)
    with pytest.raises(DataError, match=rf"^{re.escape(given)}: no images/ or masks/ folder; expected "
                                        rf"{re.escape(os.path.join(given, 'images'))}/ and "
                                        rf"{re.escape(os.path.join(given, 'masks'))}/ with matching file names "
                                        rf"\(layout generic\); did you mean the folder {re.escape(data)}\?$"):
        find_pairs(given)


def test_pairs_missing_folder_next_to_the_layout_points_at_it(tmp_path):
    data = _pairs_folder(tmp_path / "my_data")
    with pytest.raises(DataError, match=rf"imgs: folder not found; .* did you mean the folder {re.escape(data)}\?$"):
        find_pairs(os.path.join(data, "imgs"))
    with pytest.raises(DataError, match=r"images/ and .*ground_truth_mask/ with matching file names \(layout ecssd\); "
                                        r"did you mean the folder"):
        find_pairs(os.path.join(data, "images"), "ecssd")


def test_pairs_wrong_folder_names_the_layout_without_a_guess(tmp_path):
    scans = tmp_path / "scans"
    (scans / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"^{re.escape(str(scans))}: no masks/ folder; expected .*images/ and "
                                        r".*masks/ with matching file names \(layout generic\)$"):
        find_pairs(str(scans))
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'gone'))}: folder not found; expected .*"
                                        r"with matching file names$"):  # own folder names: no layout to name
        find_pairs(str(tmp_path / "gone"), image_dir="x", mask_dir="y")


def test_unknown_layout_gets_the_nearest_name():
    with pytest.raises(ValueError, match=r"Unknown layout 'ecsd' \(did you mean 'ecssd'\?\)\. Valid: \['generic'"):
        find_pairs(".", "ecsd")
    with pytest.raises(ValueError, match=r"Unknown layout 'brats'\. Valid: \['generic'"):
        find_pairs(".", "brats")


# ------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def tiny_model():
    return tlunet.build_model("unet", input_shape=(32, 32, 1), filters=(4, 8, 16, 32, 64))


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        _png(folder / f"{i}.png", np.full((20, 30), 40 * i))
    return folder


def test_predict_refuses_two_images_with_one_output_name(tmp_path, scans, tiny_model):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(scans / "2.jpg")
    with pytest.raises(DataError, match=r"1 group\(s\) of images would write the same mask "
                                        r".*in.2\.jpg and .*in.2\.png"):
        predict_folder(tiny_model, str(scans), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_predict_bad_file_late_in_folder_writes_nothing(tmp_path, scans, tiny_model):
    (scans / "9_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("filename\nold.png\n")
    with pytest.raises(DataError, match=r"in: 1 of 6 images are unreadable, nothing was written: .*9_bad\.png: "
                                        r"not a readable image"):
        predict_folder(tiny_model, str(scans), str(out))
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]  # the earlier run's output, untouched
    assert (out / "predictions.csv").read_text() == "filename\nold.png\n"


def test_predict_failing_midway_leaves_no_predictions_csv(tmp_path, scans, tiny_model, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("filename\nold.png\n")
    import tlunet.predict as predict
    calls = []

    def overlay_then_fail(image, mask):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return image.repeat(3, -1)

    monkeypatch.setattr(predict, "overlay", overlay_then_fail)
    with pytest.raises(OSError, match="No space left"):
        predict_folder(tiny_model, str(scans), str(out))
    assert not (out / "predictions.csv").exists() and not list(out.glob("*.partial"))
    assert len(list((out / "masks").iterdir())) == 3  # partial masks, but nothing says "complete"


@pytest.mark.parametrize("size", [0, -0.2, float("nan"), float("inf")])
def test_predict_bad_pixel_size_names_the_argument(tmp_path, scans, tiny_model, size):
    with pytest.raises(DataError, match=rf"`pixel_sizes` \(tlunet predict --pixel-size\) {size!r} must be a "
                                        "positive finite number"):
        predict_folder(tiny_model, str(scans), str(tmp_path / "out"), pixel_sizes=size)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("row, problem", [
    ("b.png,0", r", line 3: pixel size\(mm\) '0' must be a positive finite number"),
    ("b.png,-1", r", line 3: pixel size\(mm\) '-1' must be a positive finite number"),
    ("b.png,nan", r", line 3: pixel size\(mm\) 'nan' must be a positive finite number"),
    ("b.png,abc", r", line 3: pixel size\(mm\) 'abc' is not a number"),
    ('b.png,"0,227"', r", line 3: pixel size\(mm\) '0,227' is not a number \(a decimal comma\?"),
    ("b.png,0,227", r", line 3: 3 fields where the header has 2: 'b.png,0,227' \(a decimal comma\?"),
    ("a.png,0.2", r": 'a.png' has two rows, lines 2 and 3"),
])
def test_pixel_size_csv_bad_rows_name_file_line_and_value(tmp_path, row, problem):
    path = tmp_path / "sizes.csv"
    path.write_text(f"filename,pixel size(mm)\na.png,0.2\n{row}\n")
    with pytest.raises(DataError, match=r"sizes\.csv" + problem):
        read_pixel_sizes(str(path))


def test_pixel_size_csv_good_and_missing(tmp_path):
    (tmp_path / "sizes.csv").write_text("filename,pixel size(mm)\na.png,0.2\nb.png,1e-1\n")
    assert read_pixel_sizes(str(tmp_path / "sizes.csv")) == {"a.png": 0.2, "b.png": 0.1}
    with pytest.raises(DataError, match=r"nope\.csv: pixel-size CSV not found"):
        read_pixel_sizes(str(tmp_path / "nope.csv"))


# ------------------------------------------------------------------------------------ SavedModel
@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    return tf.saved_model.load(export_savedmodel(tiny_model, tmp_path_factory.mktemp("export") / "sm"))


_SCAN = (np.random.default_rng(0).random((1, 24, 40, 1)) * 255).astype(np.uint8)


def test_savedmodel_serve_takes_uint8_and_float32_alike(served):
    expected = served.serve(tf.constant(_SCAN)).numpy()
    assert expected.shape == (1, 24, 40, 1)
    # numpy float32 in [0, 1]: before, silently cast to uint8 (a black image)
    for out in (served.serve(_SCAN), served.serve(_SCAN.astype(np.float32) / 255),
                served.serve(tf.constant(_SCAN, tf.float32) / 255),
                served.serve_float(_SCAN.astype(np.float32) / 255)):
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    signatures = {k: f.structured_input_signature[1]["images"].dtype for k, f in served.signatures.items()}
    assert signatures == {"serve": tf.uint8, "serving_default": tf.uint8, "serve_float": tf.float32,
                          "serve_model": tf.float32}


@pytest.mark.parametrize("x", [np.full((1, 8, 8, 1), 300, np.int32), _SCAN.astype(np.float64) / 255,
                               tf.constant(_SCAN, tf.int32)], ids=["np-int32-300", "np-float64", "tf-int32"])
def test_savedmodel_serve_refuses_other_dtypes(served, x):
    with pytest.raises(ValueError, match="Could not find matching concrete function"):  # before: 300 wrapped to 44
        served.serve(x)


@pytest.mark.parametrize("endpoint", ["serve", "serve_float"])
@pytest.mark.parametrize("x", [_SCAN.astype(np.float32), np.full((1, 8, 8, 1), np.nan, np.float32),
                               np.full((1, 8, 8, 1), -0.1, np.float32)], ids=["0-255-as-float", "nan", "negative"])
def test_savedmodel_float_input_outside_unit_range_fails(served, endpoint, x):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"float32 images must be finite and in \[0, 1\] .*found min\] \[[^]]+\] \[max\]"):
        getattr(served, endpoint)(x)


def test_savedmodel_serve_float_refuses_uint8_range(served):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"float32 images must be finite and in \[0, 1\] .*found min\] \[\d+\] \[max\] \[\d+\]"):
        served.serve_float(_SCAN)  # cast to float 0-255 by the float32 signature, then caught


@pytest.mark.parametrize("endpoint", ["serve", "serve_float"])
def test_savedmodel_empty_batch_is_an_empty_result(served, endpoint):
    out = getattr(served, endpoint)(np.zeros((0, 24, 40, 1), np.float32))  # before: a convolution's shape error
    assert out.shape == (0, 24, 40, 1) and out.dtype == tf.float32
