"""HC18 layout: records, subject-grouped splits, filled masks, TFDS builder, bad input."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tlunet.biometry import head_circumference
from tlunet.data import (DataError, fill_annotation, find_hc18, hc18_set, load_arrays,
                         split_by_subject, subject_of)
from tlunet.data.phantoms import fetal_head, write_hc18_layout
from tlunet.evaluation import dice


@pytest.fixture
def hc18_root(tmp_path):
    return write_hc18_layout(str(tmp_path / "hc18"), n=6)


def test_records_and_subjects(hc18_root):
    records = find_hc18(hc18_root)
    assert len(records) == 6
    assert subject_of("017_2HC.png") == subject_of("017_HC.png") == "017"
    assert {r.subject for r in records if "001_" in r.image} == {"001"}
    assert sum(r.subject == "001" for r in records) == 2


@pytest.mark.parametrize("seed", range(5))
def test_split_never_separates_a_subject(hc18_root, seed):
    train, test = split_by_subject(find_hc18(hc18_root), (0.5, 0.5), seed=seed)
    assert not {r.subject for r in train} & {r.subject for r in test}
    assert len(train) + len(test) == 6 and train and test


def test_filled_annotation_recovers_the_drawn_head():
    for seed in range(4):
        head = fetal_head(seed=seed)
        mask, fit = fill_annotation(head["outline"])
        assert dice(mask, head["mask"]) > 0.98
        hc = head_circumference(mask, head["pixel_size"])
        assert abs(hc - head["hc_mm"]) / head["hc_mm"] < 0.01


def test_hc18_set_loads_images_and_filled_masks(hc18_root):
    data = hc18_set(hc18_root)
    images, masks = load_arrays(data, (128, 192))
    assert images.shape == (6, 128, 192, 1) and images.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    assert data.meta[0]["pixel_size"] > 0 and data.meta[0]["original_size"] == (270, 400)


def test_csv_row_without_its_image_names_the_file(hc18_root):
    os.remove(os.path.join(hc18_root, "training_set", "003_HC.png"))
    with pytest.raises(DataError, match="003_HC.png does not exist"):
        find_hc18(hc18_root)


def test_empty_annotation_is_an_error(hc18_root):
    path = os.path.join(hc18_root, "training_set", "004_HC_Annotation.png")
    Image.fromarray(np.zeros((270, 400), np.uint8)).save(path)
    with pytest.raises(DataError, match="004_HC_Annotation.png: empty annotation"):
        load_arrays(hc18_set(hc18_root), (64, 64))


def test_missing_csv_and_folder(tmp_path, hc18_root):
    os.remove(os.path.join(hc18_root, "training_set_pixel_size_and_HC.csv"))
    with pytest.raises(DataError, match="training_set_pixel_size_and_HC.csv: file not found"):
        find_hc18(hc18_root)
    with pytest.raises(DataError, match="no training_set/ folder"):
        find_hc18(str(tmp_path))


def test_bad_csv_number_names_the_line(hc18_root):
    csv_path = os.path.join(hc18_root, "training_set_pixel_size_and_HC.csv")
    lines = open(csv_path).read().splitlines()
    lines[2] = lines[2].split(",")[0] + ",abc,12"
    open(csv_path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3"):
        find_hc18(hc18_root)


@pytest.mark.slow
def test_tfds_builder_builds_offline_from_manual_dir(hc18_root, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tlunet.data.tfds_hc18  # noqa: F401  (registers "hc18")
    builder = tfds.builder("hc18", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=hc18_root))
    examples = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert len(examples) == 6
    by_name = {e["filename"].decode(): e for e in examples}
    rec = {os.path.basename(r.image): r for r in find_hc18(hc18_root)}
    for name, e in by_name.items():
        assert e["image"].shape == (270, 400, 1)
        assert e["pixel_size"] == pytest.approx(rec[name].pixel_size)
        expected, _ = fill_annotation(np.asarray(Image.open(rec[name].annotation)))
        np.testing.assert_array_equal(e["mask"][..., 0], expected)


@pytest.mark.realdata
def test_real_hc18_circumference_from_annotations(shared_data):
    """HC measured from the ground-truth annotations must match the challenge's CSV."""
    records = find_hc18(str(shared_data / "hc18"))
    assert len(records) == 279
    errors = []
    for r in records:
        mask, _ = fill_annotation(np.asarray(Image.open(r.annotation)))
        errors.append(head_circumference(mask, r.pixel_size) - r.hc_mm)
    errors = np.abs(errors)
    assert errors.mean() < 1.5, errors.mean()
    assert errors.max() < 1.5, errors.max()


@pytest.mark.realdata
def test_real_hc18_subject_split(shared_data):
    records = find_hc18(str(shared_data / "hc18"))
    train, val, test = split_by_subject(records, (0.7, 0.15, 0.15), seed=0)
    subjects = [{r.subject for r in part} for part in (train, val, test)]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    twins = [r.subject for r in records if "_2HC" in r.image]
    assert twins  # the real data has several images of one fetus
    assert abs(len(train) / len(records) - 0.7) < 0.1


def test_copy_of_layout_with_stray_files_is_fine(hc18_root, tmp_path):
    """Extra files in training_set/ that the CSV does not list are ignored (the CSV drives)."""
    dst = tmp_path / "copy"
    shutil.copytree(hc18_root, dst)
    (dst / "training_set" / "notes.txt").write_text("x")
    assert len(find_hc18(str(dst))) == 6
