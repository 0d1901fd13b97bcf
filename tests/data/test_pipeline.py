"""Pipelines: determinism, joint geometry, masks staying discrete, resize, bad files."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlunet.data import (AugmentConfig, DataError, SegmentationSet, augment_pair, find_pairs,
                         load_arrays, make_dataset, resize_pair)
from tlunet.data.augment import get_augment_config
from tlunet.evaluation import dice


def _blobs(n=8, size=(64, 48), classes=2, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, *size), np.uint8)
    for i in range(n):
        for label in range(1, classes):
            y, x = rng.integers(8, size[0] - 16), rng.integers(8, size[1] - 16)
            masks[i, y:y + 12, x:x + 10] = label
    images = (rng.random((n, *size, 1)) * 80 + masks[..., None] * 60).astype(np.uint8)
    return images, masks


def _collect(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_same_seed_same_stream_and_epochs_differ():
    images, masks = _blobs()
    a = make_dataset(images, masks, batch_size=3, augment="wang2023", seed=5)
    b = make_dataset(images, masks, batch_size=3, augment="wang2023", seed=5)
    e1, e2, other = _collect(a), _collect(a), _collect(b)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(e1, other))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(e1, e2))
    c = _collect(make_dataset(images, masks, batch_size=3, augment="wang2023", seed=6))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(e1, c))


@pytest.mark.parametrize("preset", ["wang2023", "cheng2021", "ultrasound",
                                    {"rotation": 30, "shear": 20, "zoom": 0.3, "shift": 0.2}])
@pytest.mark.parametrize("classes", [2, 3])
def test_masks_stay_discrete_and_images_in_range(preset, classes):
    images, masks = _blobs(classes=classes)
    for x, y in make_dataset(images, masks, batch_size=4, augment=preset, seed=1):
        assert x.dtype == tf.float32 and y.shape[-1] == 1
        assert set(np.unique(y.numpy())) <= set(range(classes))
        assert x.numpy().min() >= 0 and x.numpy().max() <= 1


def test_image_and_mask_get_the_same_geometry():
    """With the image equal to the mask, the augmented image thresholded must equal the mask."""
    _, masks = _blobs(n=16)
    images = (masks[..., None] * 255).astype(np.uint8)
    cfg = {"rotation": 40, "shear": 15, "zoom": 0.2, "shift": 0.1, "hflip": 0.5, "vflip": 0.5}
    scores = []
    for x, y in make_dataset(images, masks, batch_size=16, augment=cfg, seed=2):
        for xi, yi in zip(x.numpy(), y.numpy()):
            if yi.sum() > 20:
                scores.append(dice(xi[..., 0] > 0.5, yi[..., 0] > 0.5))
    assert len(scores) > 8 and min(scores) > 0.9


def test_flips_are_exact_and_intensity_leaves_mask_alone():
    images, masks = _blobs(n=1)
    image = tf.constant(images[0] / 255.0, tf.float32)
    mask = tf.constant(masks[0][..., None], tf.float32)
    seed = tf.constant([1, 2], tf.int64)
    x, y = augment_pair(image, mask, seed, AugmentConfig(hflip=1.0))
    np.testing.assert_array_equal(y.numpy(), mask.numpy()[:, ::-1])
    np.testing.assert_allclose(x.numpy(), image.numpy()[:, ::-1])
    x, y = augment_pair(image, mask, seed, AugmentConfig(brightness=0.3, contrast=0.3, gamma=0.3,
                                                         speckle=0.2))
    np.testing.assert_array_equal(y.numpy(), mask.numpy())
    assert not np.allclose(x.numpy(), image.numpy())


def test_rotation_is_rigid_about_the_centre():
    """Whatever angle is drawn, rotation about the centre keeps the bar's distance to the centre."""
    mask = np.zeros((33, 33, 1), np.float32)
    mask[0:3, 10:23] = 1  # a bar along the top
    cfg = AugmentConfig(rotation=90.0)
    x, y = augment_pair(tf.constant(mask), tf.constant(mask), tf.constant([0, 0], tf.int64), cfg)
    y = y.numpy()[..., 0]
    assert y.sum() > 0
    rows, cols = np.nonzero(y)
    dist = np.hypot(rows.mean() - 16, cols.mean() - 16)
    assert abs(dist - np.hypot(1 - 16, 16 - 16)) < 2.5


def test_augment_config_validation():
    with pytest.raises(ValueError, match="fill_mode"):
        AugmentConfig(fill_mode="wrap-around")
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(hflip=2)
    with pytest.raises(ValueError, match="Unknown augmentation options"):
        get_augment_config({"rotate": 10})
    with pytest.raises(ValueError, match="Unknown augmentation preset"):
        get_augment_config("strong")
    assert get_augment_config({"preset": "wang2023", "vflip": 0.0}).rotation == 25.0


def test_resize_keep_aspect_pads_and_reports_geometry():
    image = np.full((100, 200, 1), 200, np.uint8)
    mask = np.ones((100, 200), np.uint8)
    img, msk, (sy, sx, top, left) = resize_pair(image, mask, (128, 128), keep_aspect=True)
    assert img.shape == (128, 128, 1) and msk.shape == (128, 128)
    assert (sy, sx) == (0.64, 0.64) and (top, left) == (32, 0)
    assert msk[:32].sum() == 0 and msk[32:96].all() and img[:32].max() == 0
    img, msk, geometry = resize_pair(image, mask, (64, 64))
    assert img.shape == (64, 64, 1) and geometry == (0.64, 0.32, 0, 0)


def _write_pairs(root, n=3, size=(40, 30)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full(size, 100, np.uint8)).save(root / "images" / f"{i}.jpg")
        m = np.zeros(size, np.uint8)
        m[5:15, 5:15] = 255
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    return root


def test_paired_folders_match_by_stem(tmp_path):
    data = find_pairs(str(_write_pairs(tmp_path / "d", n=12)))
    assert [m["stem"] for m in data.meta] == [str(i) for i in range(12)]  # numeric order
    images, masks = load_arrays(data, (32, 32), channels=3)
    assert images.shape == (12, 32, 32, 3) and set(np.unique(masks)) == {0, 1}


def test_missing_mask_names_the_image(tmp_path):
    root = _write_pairs(tmp_path / "d")
    (root / "masks" / "1.png").unlink()
    with pytest.raises(DataError, match=r"have no mask.*1\.jpg"):
        find_pairs(str(root))


def test_mask_without_image(tmp_path):
    root = _write_pairs(tmp_path / "d")
    (root / "images" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"have no image.*2\.png"):
        find_pairs(str(root))


def test_truncated_image_names_the_file(tmp_path):
    root = _write_pairs(tmp_path / "d")
    data = (root / "images" / "1.jpg").read_bytes()
    (root / "images" / "1.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"1\.jpg: not a readable image"):
        load_arrays(find_pairs(str(root)), (32, 32))


def test_unreadable_file_names_the_file(tmp_path):
    root = _write_pairs(tmp_path / "d")
    (root / "images" / "0.jpg").write_text("this is not a jpeg")
    with pytest.raises(DataError, match=r"0\.jpg: not a readable image"):
        load_arrays(find_pairs(str(root)), (32, 32))


def test_size_mismatch_names_both_files(tmp_path):
    root = _write_pairs(tmp_path / "d")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "2.png")
    with pytest.raises(DataError, match=r"2\.jpg is 30x40 but its mask .*2\.png is 20x20"):
        load_arrays(find_pairs(str(root)), (32, 32))


def test_non_binary_mask_where_binary_expected(tmp_path):
    root = _write_pairs(tmp_path / "d")
    Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(40, 30) % 7).save(root / "masks" / "0.png")
    with pytest.raises(DataError, match=r"0\.png: expected a binary mask"):
        load_arrays(find_pairs(str(root)), (32, 32))
    # ...but as a 7-class mask it is fine, and 3 classes is too few.
    with pytest.raises(DataError, match="out of range"):
        load_arrays(find_pairs(str(root), num_classes=3), (32, 32))


def test_empty_set_and_mismatched_arrays():
    with pytest.raises(ValueError, match="empty"):
        load_arrays(SegmentationSet([], []), (8, 8))
    with pytest.raises(ValueError, match="must agree"):
        make_dataset(np.zeros((2, 8, 8, 1), np.uint8), np.zeros((3, 8, 8), np.uint8))


@pytest.mark.realdata
@pytest.mark.parametrize("layout,count,labels", [("ecssd", 500, {0, 1}), ("covid_ct", 50, {0, 1}),
                                                 ("covid_ct_multiclass", 50, {0, 1, 2})])
def test_real_paired_layouts(shared_data, layout, count, labels):
    folder = "ecssd" if layout == "ecssd" else "covid_ct_slices"
    data = find_pairs(str(shared_data / folder), layout)
    assert len(data) == count
    sub = data.subset(range(0, count, max(1, count // 20)))
    images, masks = load_arrays(sub, (96, 96), channels=1)
    assert set(np.unique(masks)) <= labels and len(np.unique(masks)) >= 2


def test_flip_folded_into_the_affine_equals_an_exact_flip():
    """A zero-range geometric transform plus a certain flip must be the exact mirror image."""
    images, masks = _blobs(n=1)
    image = tf.constant(images[0] / 255.0, tf.float32)
    mask = tf.constant(masks[0][..., None], tf.float32)
    cfg = AugmentConfig(rotation=1e-9, hflip=1.0, vflip=1.0)  # geometric path, no real rotation
    x, y = augment_pair(image, mask, tf.constant([5, 6], tf.int64), cfg)
    np.testing.assert_array_equal(y.numpy(), mask.numpy()[::-1, ::-1])
    np.testing.assert_allclose(x.numpy(), image.numpy()[::-1, ::-1], atol=1e-4)


def test_tlunet_pipelines_do_not_autotune():
    """tf.data's autotuning slowed training epochs at random on a 2-core CPU (benchmarks/main_job.py)."""
    from tlunet.data import make_classification_dataset
    from tlunet.data.nifti import make_patch_dataset
    images, masks = _blobs(n=4)
    volumes = [np.zeros((8, 8, 8), np.float32)]
    for ds in (make_dataset(images, masks, batch_size=2, augment="wang2023"),
               make_classification_dataset(list(images), [0, 1, 0, 1], (16, 16), batch_size=2),
               make_patch_dataset(volumes, [np.zeros((8, 8, 8), np.uint8)], (4, 4, 4), batch_size=2)):
        assert ds.options().autotune.enabled is False
