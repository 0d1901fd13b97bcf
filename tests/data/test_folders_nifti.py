"""Class folders of frames/videos, NIfTI volumes, patches, phantoms."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlunet.data import (DataError, augment_volume, find_class_folders, frames_by_group, hu_window,
                         load_nifti, read_frames, sample_patch, split_indices)
from tlunet.data.phantoms import LUNG_US_CLASSES, ct_volume, lung_ultrasound

nib = pytest.importorskip("nibabel")


def _write_gif(path, n_frames, value):
    frames = [Image.fromarray(np.full((20, 24), value + 10 * i, np.uint8)) for i in range(n_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)


@pytest.fixture
def pocus(tmp_path):
    for cls, videos in {"covid": 3, "normal": 2, "pneumonia": 2}.items():
        (tmp_path / cls).mkdir()
        for v in range(videos):
            _write_gif(tmp_path / cls / f"{cls}_{v}.gif", 4, v * 20)
        Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / cls / f"{cls}_still.png")
    return tmp_path


def test_class_folders_and_frames(pocus):
    items, classes = find_class_folders(str(pocus))
    assert classes == ["covid", "normal", "pneumonia"]
    assert len(items) == 10
    frames, labels, groups = frames_by_group(items, every=2)
    assert len(frames) == 7 * 2 + 3  # 7 GIFs of 4 frames every 2nd, 3 stills
    assert frames[0].shape == (20, 24, 1)
    assert np.bincount(labels).tolist() == [3 * 2 + 1, 2 * 2 + 1, 2 * 2 + 1]


@pytest.mark.parametrize("seed", range(4))
def test_frames_of_a_video_stay_in_one_split(pocus, seed):
    items, _ = find_class_folders(str(pocus))
    _, _, groups = frames_by_group(items)
    train, test = split_indices(len(groups), (0.6, 0.4), seed=seed, groups=groups)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert sorted(train + test) == list(range(len(groups)))


def test_broken_video_names_the_file(pocus):
    bad = pocus / "covid" / "covid_0.gif"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataError, match="covid_0.gif"):
        read_frames(str(bad))


def test_no_class_folders(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        find_class_folders(str(tmp_path))


def _save_nifti(path, data, spacing=(0.8, 0.8, 2.5), flip_x=False):
    affine = np.diag([*spacing, 1.0])
    if flip_x:  # stored left-right mirrored (LAS), as some scanners write it
        affine[0, 0] = -spacing[0]
        affine[0, 3] = spacing[0] * (data.shape[0] - 1)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_nifti_orientation_window_and_resampling(tmp_path):
    vol = np.full((40, 30, 10), -1000.0, np.float32)  # (x, y, z) as NIfTI stores it
    vol[3, 5, 7] = 250.0  # a marker
    mask = (vol > 0).astype(np.uint8)
    _save_nifti(tmp_path / "ct.nii.gz", vol, flip_x=True)
    _save_nifti(tmp_path / "seg.nii.gz", mask, flip_x=True)
    out = load_nifti(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz")
    assert out["image"].shape == (10, 30, 40)  # (z, y, x)
    assert out["spacing"] == pytest.approx((2.5, 0.8, 0.8))
    z, y, x = np.argwhere(out["image"] == 1.0)[0]
    assert (z, y, x) == (7, 5, 40 - 1 - 3)  # canonical RAS flips the stored x axis
    assert out["mask"][z, y, x] == 1 and out["mask"].sum() == 1
    assert out["image"].min() == pytest.approx(250 / 1500)  # -1000 HU in the [-1250, 250] window
    res = load_nifti(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", target_spacing=(1.25, 1.6, 1.6))
    assert res["image"].shape == (20, 15, 20) and res["mask"].dtype == np.uint8
    assert set(np.unique(res["mask"])) <= {0, 1}


def test_nifti_nan_and_mismatch_are_errors(tmp_path):
    vol = np.zeros((8, 8, 4), np.float32)
    vol[1, 1, 1] = np.nan
    _save_nifti(tmp_path / "nan.nii.gz", vol)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 1 voxels are NaN"):
        load_nifti(tmp_path / "nan.nii.gz")
    _save_nifti(tmp_path / "a.nii.gz", np.zeros((8, 8, 4), np.float32))
    _save_nifti(tmp_path / "b.nii.gz", np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match="not on the same voxel grid"):
        load_nifti(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.nii\.gz: not a readable NIfTI"):
        load_nifti(tmp_path / "junk.nii.gz")


def test_hu_window():
    np.testing.assert_allclose(hu_window(np.array([-2000.0, -1250.0, -500.0, 250.0, 900.0])),
                               [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="window"):
        hu_window(np.zeros(3), (100, -100))


def test_patches_oversample_foreground():
    ct = ct_volume(seed=1)
    rng = np.random.default_rng(0)
    with_fg = [sample_patch(ct["image"], ct["mask"], (16, 32, 32), rng, 1.0)[1].any() for _ in range(30)]
    assert all(with_fg)
    rng = np.random.default_rng(0)
    random = [sample_patch(ct["image"], ct["mask"], (16, 32, 32), rng, 0.0)[1].any() for _ in range(60)]
    assert np.mean(random) < 1.0
    small = sample_patch(np.ones((4, 8, 8)), np.ones((4, 8, 8)), (8, 16, 16), rng)
    assert small[0].shape == (8, 16, 16) and small[0].sum() == 4 * 8 * 8  # zero-padded


def test_volume_augmentation_keeps_labels_and_voxels():
    ct = ct_volume(shape=(16, 32, 32), seed=2)
    vol = tf.constant(ct["image"][..., None])
    mask = tf.constant(ct["mask"][..., None].astype(np.float32))
    v, m = augment_volume(vol, mask, tf.constant([3, 4], tf.int64))
    assert m.shape == mask.shape
    assert m.numpy().sum() == mask.numpy().sum()  # flips and rot90 only move voxels
    assert np.sort(v.numpy().ravel()) == pytest.approx(np.sort(vol.numpy().ravel()))
    v, m = augment_volume(vol, mask, tf.constant([3, 4], tf.int64), rotation=10, zoom=0.1)
    assert set(np.unique(m.numpy())) <= {0.0, 1.0}


def test_lung_ultrasound_phantom_labels():
    plain = lung_ultrasound(seed=0)
    assert 2 in plain["dense"] and 3 not in plain["dense"]  # A-lines, no B-lines
    sick = lung_ultrasound(n_b_lines=3, seed=0)
    assert 3 in sick["dense"] and 2 not in sick["dense"]  # B-lines erase A-lines
    for frame in (plain, sick):
        assert set(np.unique(frame["sparse"])) <= set(range(len(LUNG_US_CLASSES)))
        sparse, dense = frame["sparse"] > 0, frame["dense"] > 0
        assert sparse.sum() < dense.sum() and np.all(dense[sparse])  # sparse lines lie in dense
        assert frame["rib_mask"].any()
        below_ribs = frame["image"][frame["params"]["pleura_y"] + 10:, frame["rib_mask"].any(0)]
        assert below_ribs.mean() < frame["image"].mean()  # acoustic shadows


def test_ct_phantom_lesions_are_in_lungs():
    ct = ct_volume(seed=0)
    assert ct["mask"].sum() > 0
    assert np.all(ct["lungs"][ct["mask"] > 0])
    assert -650 < ct["image"][ct["mask"] > 0].mean() < -350


def test_patch_dataset_is_seeded_and_oversamples_foreground():
    from tlunet.data import make_patch_dataset
    cts = [ct_volume(shape=(16, 48, 48), seed=s) for s in range(2)]
    vols = [hu_window(c["image"]) for c in cts]
    masks = [c["mask"] for c in cts]
    ds = make_patch_dataset(vols, masks, (8, 24, 24), batch_size=4, patches_per_volume=4,
                            foreground_prob=1.0, seed=3)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    again = [(x.numpy(), y.numpy()) for x, y in make_patch_dataset(
        vols, masks, (8, 24, 24), batch_size=4, patches_per_volume=4, foreground_prob=1.0, seed=3)]
    assert len(first) == 2 and first[0][0].shape == (4, 8, 24, 24, 1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert all(y.reshape(4, -1).max(1).min() == 1 for _, y in first)  # every patch holds lesion


def test_classification_dataset(pocus):
    from tlunet.data import make_classification_dataset
    items, _ = find_class_folders(str(pocus))
    frames, labels, _ = frames_by_group(items)
    ds = make_classification_dataset(frames, labels, (32, 32), batch_size=5, augment="ultrasound")
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    assert xs[0].shape == (5, 32, 32, 1) and sorted(np.concatenate(ys).tolist()) == sorted(labels.tolist())
