"""Readers of publisher layouts registered as data kinds: lung-US rib masks (`lung_us_ribs`), POCUS
fold folders (`pocus_folds`), HDF5 patches (`hdf5_patches`). On the real data (../shared/data,
skipped when absent) and on tiny fake folders for every bad input."""

import collections
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tlunet.data import (DataError, find_lung_us_ribs, find_pocus, hdf5_patch_set, lung_us_groups, lung_us_ribs_set,
                         make_classification_dataset, pocus_video_folds, read_frame_mask, read_hdf5_patches,
                         unannotated_rib_lines, video_of)
from tlunet.data.kinds import data_kind, load_image_set

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # as tests/conftest.py finds it
CLASSES = ["covid", "pneumonia", "regular"]
LINES = ["rib_shadow", "rib_line", "pleural_line"]


def _real(folder):
    """The real data sub-folder `folder`, or skip saying which is absent."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return str(path)


@pytest.fixture(scope="module")
def ribs_label_maps():
    """The 184 real frames whose three classes are all annotated, at 64x64, as label maps (read once per module)."""
    root = _real("lung_us_ribs")
    block = {"kind": "lung_us_ribs", "root": root, "image_size": [64, 64], "channels": 1, "classes": LINES}
    return load_image_set(block, root=root)


# ------------------------------------------------------------------------------ lung_us_ribs, real data
@pytest.mark.realdata
def test_real_ribs_frames_clips_and_groups():
    root = _real("lung_us_ribs")
    frames = find_lung_us_ribs(root)
    assert len(frames) == 208
    clips = collections.Counter(f.clip for f in frames)
    assert len(clips) == 16 and set(clips.values()) == {13}
    seventh = frames[7]
    assert (seventh.name, seventh.clip, seventh.subject) == ("din-01-L-1-V-frame7", "din-01-L-1-V", "din-01")
    data = lung_us_ribs_set(root)
    assert data.num_classes == 2 and data.meta[7]["name"] == "din-01-L-1-V-frame7"
    by_clip = lung_us_groups(data.meta, "clip")
    assert all(len({g for g, m in zip(by_clip, data.meta) if m["clip"] == c}) == 1 for c in clips)
    assert len(set(by_clip)) == 16 and sorted(set(lung_us_groups(data.meta, "subject"))) == \
        ["din-01", "din-02", "man-01", "man-02"]
    assert sorted(set(lung_us_groups(data.meta, "number"))) == ["01", "02"]


@pytest.mark.realdata
def test_real_ribs_binary_masks_and_missing_rib_lines():
    root = _real("lung_us_ribs")
    data = lung_us_ribs_set(root)  # rib_shadow
    for i in (0, 100, 207):
        mask = data.read_mask(data.masks[i])
        assert mask.shape == (820, 1124) and set(np.unique(mask)) == {0, 1}
        assert 0 < mask.mean() < 0.9
    without = [f for f in find_lung_us_ribs(root) if f.masks["rib_line"] is None]
    assert len(without) == 24 and unannotated_rib_lines(root) == [f.name for f in without]
    lines = lung_us_ribs_set(root, "rib_line")  # frames whose rib line was not annotated are left out
    assert len(lines) == 184 and not {m["name"] for m in lines.meta} & {f.name for f in without}
    empty = lung_us_ribs_set(root, "rib_line", missing_rib_line="empty")
    first = empty.meta.index(next(m for m in empty.meta if m["name"] == without[0].name))
    assert len(empty) == 208 and not empty.read_mask(empty.masks[first]).any()
    assert all(not read_frame_mask(f, "rib_line").any() for f in without[:6])


@pytest.mark.realdata
def test_real_ribs_label_map_through_the_registry(ribs_label_maps):
    images, masks, meta, groups, source = ribs_label_maps
    assert images.shape == (184, 64, 64, 1) and images.dtype == np.uint8
    assert masks.shape == (184, 64, 64) and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1, 2, 3}
    assert (masks == 1).mean() > (masks == 3).mean() > 0  # shadows are larger than pleural lines
    assert len(meta) == len(groups) == 184 and len(set(groups)) == 16 and "16 groups" in source
    assert "24 frames without a rib_line file left out" in source
    assert meta[0]["original_size"] == (820, 1124)
    missing = set(unannotated_rib_lines(_real("lung_us_ribs")))
    assert not {m["name"] for m in meta} & missing


@pytest.mark.realdata
def test_real_ribs_binary_default_shapes():
    root = _real("lung_us_ribs")
    block = {"kind": "lung_us_ribs", "root": root, "image_size": [64, 64], "channels": 1, "limit": 4}
    images, masks, meta, groups, _ = load_image_set(block, root=root)
    assert images.shape == (4, 64, 64, 1) and masks.shape == (4, 64, 64) and set(np.unique(masks)) <= {0, 1}
    assert groups == ["din-01-L-1-V"] * 4 and [m["clip"] for m in meta] == groups


# ------------------------------------------------------------------------------ pocus_folds, real data
REAL_POCUS = {"split0": {"covid": 88, "pneumonia": 97, "regular": 161},
              "split1": {"covid": 100, "pneumonia": 84, "regular": 159},
              "split2": {"covid": 167, "pneumonia": 89, "regular": 183},
              "split3": {"covid": 53, "pneumonia": 97, "regular": 309}}


@pytest.mark.realdata
def test_real_pocus_counts_and_publisher_folds():
    root = _real("pocus_frames")
    items = find_pocus(root, CLASSES)
    assert len(items) == 1587
    counts = collections.Counter((i["fold"], i["class"]) for i in items)
    assert {f: {c: counts[f, c] for c in CLASSES} for f in REAL_POCUS} == REAL_POCUS
    fold_of = pocus_video_folds(root)
    assert len(fold_of) == len({i["group"] for i in items}) and set(fold_of.values()) == set(REAL_POCUS)
    assert all(fold_of[i["group"]] == i["fold"] for i in items)
    assert any(i["path"].endswith(".JPG") for i in items) and any(i["path"].endswith(".png") for i in items)


@pytest.mark.realdata
def test_real_pocus_loader_frames_feed_the_classifier():
    root = _real("pocus_frames")
    frames, labels, groups, desc = data_kind("pocus_folds", "frames").load(
        {"folds": [3], "max_frames": 1}, root=root, seed=0, classes=CLASSES)
    fold_of = pocus_video_folds(root)
    assert len(frames) == len(set(groups)) == 29 and {fold_of[g] for g in groups} == {"split3"}
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[-1] == 1 for f in frames)
    assert set(labels.tolist()) == {0, 1, 2} and "split3" in desc
    assert all(g.startswith(CLASSES[label] + "/") for g, label in zip(groups, labels))
    x, y = next(iter(make_classification_dataset(frames, labels, (32, 32), batch_size=8, shuffle=False)))
    assert x.shape == (8, 32, 32, 1) and y.shape == (8,)


@pytest.mark.realdata
def test_real_pocus_classes_must_match_the_folders():
    root = _real("pocus_frames")
    with pytest.raises(DataError, match=r"split0: class folders \['covid', 'pneumonia', 'regular'\] do not match "
                                        r"`classes` \['covid', 'pneumonia', 'healthy'\]"):
        find_pocus(root, ["covid", "pneumonia", "healthy"])


# ------------------------------------------------------------------------------ hdf5_patches, real data
@pytest.mark.realdata
def test_real_msd_patches():
    root = _real("msd_lung_patches")
    data, groups = hdf5_patch_set(root)
    images, masks = data.arrays
    assert len(data) == 260 and collections.Counter(groups) == {"test_patches.h5": 130, "val_patches.h5": 130}
    assert images.shape == (260, 48, 48, 1) and images.dtype == np.uint8
    assert masks.shape == (260, 48, 48) and set(np.unique(masks)) == {0, 1}
    with h5py.File(os.path.join(root, "val_patches.h5")) as h5:
        raw = h5["images"][5, 0]
    np.testing.assert_array_equal(images[130 + 5, ..., 0], np.rint(raw * 255).astype(np.uint8))
    block = {"kind": "hdf5_patches", "root": root, "image_size": [32, 32], "channels": 1, "files": ["val_patches.h5"]}
    x, y, meta, groups, _ = load_image_set(block, root=root)
    assert x.shape == (130, 32, 32, 1) and y.shape == (130, 32, 32) and set(groups) == {"val_patches.h5"}
    assert meta[5]["name"] == "val_patches_0005"


# ------------------------------------------------------------------------------ lung_us_ribs, fake folders
H, W = 48, 64
FAKE_FRAMES = ("din-01-L-1-V-frame0", "din-01-L-1-V-frame1", "man-02-R-2-V-frame0")


def _boxes():
    """Class masks that do not overlap: pleural line rows 8-16, rib line rows 16-24, rib shadow below."""
    out = {c: np.zeros((H, W), np.uint8) for c in LINES}
    out["pleural_line"][8:16] = 255
    out["rib_line"][16:24, :32] = 255
    out["rib_shadow"][24:, :32] = 255
    return out


def _write_ribs(root, frames=FAKE_FRAMES, skip=(), masks=None, sizes=None):
    """A fake publisher layout; `skip` (frame, class) files left out, `sizes` {(frame, class): (h, w)}."""
    masks, sizes = masks or _boxes(), sizes or {}
    os.makedirs(os.path.join(root, "image"))
    for cls in LINES:
        os.makedirs(os.path.join(root, "mask", cls))
    for name in frames:
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(os.path.join(root, "image", f"{name}.jpg"), quality=95)
        for cls in LINES:
            if (name, cls) not in skip:
                mask = np.asarray(Image.fromarray(masks[cls]).resize(sizes.get((name, cls), (H, W))[::-1]))
                Image.fromarray(np.stack([mask] * 3, -1)).save(
                    os.path.join(root, "mask", cls, f"{name}-{cls}.jpg"), quality=95)
    return str(root)


def test_fake_ribs_binary_label_map_and_groups(tmp_path):
    root = _write_ribs(tmp_path / "ribs")
    data = lung_us_ribs_set(root, "rib_line")
    boxes = _boxes()
    np.testing.assert_array_equal(data.read_mask(data.masks[0]), boxes["rib_line"] > 0)
    labels = lung_us_ribs_set(root, ["pleural_line", "rib_shadow", "rib_line"])
    assert labels.num_classes == 4
    expected = np.zeros((H, W), np.uint8)
    for value, cls in enumerate(["pleural_line", "rib_shadow", "rib_line"], 1):
        expected[boxes[cls] > 0] = value
    np.testing.assert_array_equal(labels.read_mask(labels.masks[2]), expected)
    assert lung_us_groups(labels.meta) == ["din-01-L-1-V", "din-01-L-1-V", "man-02-R-2-V"]
    assert lung_us_groups(labels.meta, "subject") == ["din-01", "din-01", "man-02"]
    with pytest.raises(ValueError, match=r"`group` must be one of \['clip', 'subject', 'number'\]"):
        lung_us_groups(labels.meta, "video")


def test_fake_ribs_lines_win_over_the_shadow_where_they_overlap(tmp_path):
    boxes = _boxes()
    boxes["rib_shadow"][:] = 255  # under every line
    root = _write_ribs(tmp_path / "ribs", masks=boxes)
    for classes in (["rib_shadow", "rib_line", "pleural_line"], ["pleural_line", "rib_line", "rib_shadow"]):
        data = lung_us_ribs_set(root, classes)
        mask = data.read_mask(data.masks[0])
        index = {c: i + 1 for i, c in enumerate(classes)}
        assert (mask[8:16] == index["pleural_line"]).all() and (mask[16:24, :32] == index["rib_line"]).all()
        assert (mask[24:] == index["rib_shadow"]).all()


def test_fake_ribs_missing_rib_line_is_left_out_or_read_empty(tmp_path):
    root = _write_ribs(tmp_path / "ribs", skip={("din-01-L-1-V-frame1", "rib_line")})
    frames = find_lung_us_ribs(root)
    assert frames[1].masks["rib_line"] is None and frames[0].masks["rib_line"]
    skipped = lung_us_ribs_set(root, ["rib_shadow", "rib_line"])  # not annotated: left out
    assert [m["name"] for m in skipped.meta] == ["din-01-L-1-V-frame0", "man-02-R-2-V-frame0"]
    assert len(lung_us_ribs_set(root, "rib_shadow")) == 3  # a label without rib_line keeps every frame
    data = lung_us_ribs_set(root, ["rib_shadow", "rib_line"], missing_rib_line="empty")
    mask = data.read_mask(data.masks[1])
    assert mask.shape == (H, W) and set(np.unique(mask)) == {0, 1}  # the shadow only
    block = {"kind": "lung_us_ribs", "root": root, "image_size": [16, 16], "channels": 1,
             "classes": ["rib_shadow", "rib_line"]}
    *_, groups, source = load_image_set(block, root)
    assert len(groups) == 2 and "1 frames without a rib_line file left out" in source
    with pytest.raises(ValueError, match=r"`missing_rib_line` must be one of \['skip', 'empty'\]"):
        lung_us_ribs_set(root, "rib_line", missing_rib_line="zero")


@pytest.mark.parametrize("cls", ["pleural_line", "rib_shadow"])
def test_fake_ribs_missing_required_mask_names_the_file(tmp_path, cls):
    root = _write_ribs(tmp_path / "ribs", skip={("man-02-R-2-V-frame0", cls)})
    missing = os.path.join(root, "mask", cls, f"man-02-R-2-V-frame0-{cls}.jpg")
    with pytest.raises(DataError, match=re.escape(f"{missing}: file not found")):
        find_lung_us_ribs(root)


def test_fake_ribs_mask_of_another_size_names_the_file(tmp_path):
    root = _write_ribs(tmp_path / "ribs", sizes={("din-01-L-1-V-frame1", "rib_line"): (H, W + 8)})
    bad = os.path.join(root, "mask", "rib_line", "din-01-L-1-V-frame1-rib_line.jpg")
    data = lung_us_ribs_set(root, ["rib_shadow", "rib_line"])
    data.read_mask(data.masks[0])
    with pytest.raises(DataError, match=re.escape(bad) + r" is 72x48 but its image .*frame1\.jpg is 64x48"):
        data.read_mask(data.masks[1])
    block = {"kind": "lung_us_ribs", "root": root, "image_size": [16, 16], "channels": 1, "classes": "rib_line"}
    with pytest.raises(DataError, match=re.escape(bad)):
        load_image_set(block, root=root)


def test_fake_ribs_class_empty_everywhere(tmp_path):
    boxes = _boxes()
    boxes["rib_line"][:] = 0
    root = _write_ribs(tmp_path / "ribs", masks=boxes)
    lung_us_ribs_set(root, "rib_shadow")
    folder = os.path.join(root, "mask", "rib_line")
    with pytest.raises(DataError, match=re.escape(f"{folder}: class 'rib_line' is empty in every one of the 3 frames")):
        lung_us_ribs_set(root, ["rib_shadow", "rib_line"])


@pytest.mark.parametrize("classes, message", [
    ("ribs", r"unknown class 'ribs'; the classes are \['pleural_line', 'rib_shadow', 'rib_line'\]"),
    (["rib_shadow", "pleura_line"], r"unknown class 'pleura_line'.*did you mean 'pleural_line'"),
    ([], r"`classes` must be one of"),
    (["rib_line", "rib_line"], r"`classes` \['rib_line', 'rib_line'\] names a class twice"),
])
def test_fake_ribs_bad_classes(tmp_path, classes, message):
    root = _write_ribs(tmp_path / "ribs")
    with pytest.raises(DataError, match=re.escape(root) + f": {message}"):
        data_kind("lung_us_ribs", "image").load({"classes": classes}, root=root, seed=0)


def test_fake_ribs_bad_layout_and_names(tmp_path):
    with pytest.raises(DataError, match=r"no image/ or mask/ folder; expected the publisher's layout"):
        find_lung_us_ribs(str(tmp_path))
    root = _write_ribs(tmp_path / "ribs", frames=("din-01-L-1-V-frame0", "scan7"))
    with pytest.raises(DataError, match=r"scan7.jpg: not a lung-US frame name"):
        find_lung_us_ribs(root)


# ------------------------------------------------------------------------------ pocus_folds, fake folders
def _write_pocus(root, files):
    """Fake fold folders: `files` {"split0/covid/v_frame0.jpg": grey level}."""
    for rel, level in files.items():
        os.makedirs(os.path.join(root, "cross_validation", os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(np.full((20, 24, 3), level, np.uint8)).save(os.path.join(root, "cross_validation", rel))
    return str(root)


FAKE_POCUS = {"split0/covid/a.gif_frame0.jpg": 10, "split0/covid/a.gif_frame10.jpg": 20,
              "split0/covid/a.gif_frame2.jpg": 30, "split0/covid/still.JPG": 40,
              "split0/pneumonia/p.mp4_frame0.png": 50, "split0/regular/r_frame3.jpg": 60,
              "split1/covid/b_frame0.jpg": 70, "split1/pneumonia/q_frame0.jpg": 80,
              "split1/regular/s_frame0.jpg": 90, "split1/regular/s_frame1.jpg": 100}


def test_fake_pocus_groups_labels_folds_and_every(tmp_path):
    root = _write_pocus(tmp_path / "pocus", FAKE_POCUS)
    load = data_kind("pocus_folds", "frames").load
    frames, labels, groups, desc = load({}, root=root, seed=0, classes=["regular", "covid", "pneumonia"])
    assert groups[:3] == ["covid/a.gif"] * 3 and groups[3] == "covid/still" and len(frames) == 10
    assert [int(f[0, 0, 0]) for f in frames[:3]] == [10, 30, 20]  # frame order, not name order
    assert labels.tolist() == [1, 1, 1, 1, 2, 0, 1, 2, 0, 0] and "split0, split1" in desc
    assert frames[0].shape == (20, 24, 1) and frames[0].dtype == np.uint8
    fold_of = pocus_video_folds(root)
    assert [fold_of[g] for g in groups] == ["split0"] * 6 + ["split1"] * 4
    _, _, groups, _ = load({"folds": ["split1", 0], "every": 2}, root=root, seed=0, classes=["regular", "covid",
                                                                                             "pneumonia"])
    assert groups == ["covid/b", "pneumonia/q", "regular/s", "covid/a.gif", "covid/a.gif", "covid/still",
                      "pneumonia/p.mp4", "regular/r"]
    assert len(find_pocus(os.path.join(root, "cross_validation"), max_frames=1)) == 7  # the folder itself
    assert video_of("x/Cov-Atlas+(44).gif_frame12.jpg") == ("Cov-Atlas+(44).gif", 12)


def test_fake_pocus_errors_name_the_folder(tmp_path):
    root = _write_pocus(tmp_path / "pocus", FAKE_POCUS | {"split1/healthy/h_frame0.jpg": 5})
    fold1 = os.path.join(root, "cross_validation", "split1")
    found = r"\['covid', 'healthy', 'pneumonia', 'regular'\]"
    with pytest.raises(DataError, match=re.escape(fold1) + rf": class folders {found} "
                                        r"do not match `classes` \['covid', 'pneumonia', 'regular'\]"):
        find_pocus(root, CLASSES)
    with pytest.raises(DataError, match=r"no fold 'split7'; the folds are \['split0', 'split1'\]"):
        find_pocus(root, folds=[7])
    with pytest.raises(DataError, match=r"no split<F> folders; expected the POCOVID-Net layout"):
        find_pocus(str(tmp_path))
    twice = _write_pocus(tmp_path / "twice", FAKE_POCUS | {"split1/covid/a.gif_frame5.jpg": 5})
    with pytest.raises(DataError, match=r"a.gif_frame5.jpg: video 'covid/a.gif' is also in split0"):
        find_pocus(twice)
    with pytest.raises(ValueError, match=r"`every` must be a whole number"):
        find_pocus(twice, every=0)
    no_pneumonia = {k: v for k, v in FAKE_POCUS.items() if "/pneumonia/" not in k}
    empty = _write_pocus(tmp_path / "empty", no_pneumonia)
    for fold in ("split0", "split1"):
        os.makedirs(os.path.join(empty, "cross_validation", fold, "pneumonia"))
    with pytest.raises(DataError, match=r"class 'pneumonia' has no frames in split0, split1"):
        find_pocus(empty, CLASSES)


# ------------------------------------------------------------------------------ hdf5_patches, fake files
def _write_h5(path, **arrays):
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():
            h5[key] = value
    return str(path)


def _patches(n=3, value=0.5):
    images = np.full((n, 1, 8, 10), value, np.float32)
    labels = np.zeros((n, 1, 8, 10), np.float64)
    labels[:, :, 2:5, 3:6] = 1
    return images, labels


def test_fake_patches_channels_last_uint8_and_groups(tmp_path):
    images, labels = _patches()
    images[0, 0, 0, :3] = [0.0, 1.0, 0.2]
    _write_h5(tmp_path / "a.h5", images=images, labels=labels)
    _write_h5(tmp_path / "b.h5", images=images[:2], labels=labels[:2])
    (tmp_path / "notes.txt").write_text("x")
    x, y = read_hdf5_patches(str(tmp_path / "a.h5"))
    assert x.shape == (3, 8, 10, 1) and x.dtype == y.dtype == np.uint8 and y.shape == (3, 8, 10)
    assert x[0, 0, :4, 0].tolist() == [0, 255, 51, 128] and y.sum() == 3 * 9
    data, groups = hdf5_patch_set(str(tmp_path))
    assert groups == ["a.h5"] * 3 + ["b.h5"] * 2 and data.meta[3]["name"] == "b_0000"
    assert hdf5_patch_set(str(tmp_path), ["b.h5"])[1] == ["b.h5"] * 2


@pytest.mark.parametrize("arrays, message", [
    (lambda i, lab: {"images": i}, r"no `labels` dataset; found \['images'\]"),
    (lambda i, lab: {"images": i, "labels": lab[:2]}, r"`images` \(3, 1, 8, 10\) and `labels` \(2, 1, 8, 10\) differ"),
    (lambda i, lab: {"images": i * 255, "labels": lab},
     r"`images` values lie in \[127.5, 127.5\]; expected .* \[0, 1\]"),
    (lambda i, lab: {"images": i.transpose(0, 2, 3, 1), "labels": lab},
     r"`images` has shape \(3, 8, 10, 1\); expected \(N, 1, H, W\), channels first"),
    (lambda i, lab: {"images": i, "labels": lab * 255}, r"`labels` holds \[0, 255\]; expected 0/1"),
    (lambda i, lab: {"images": np.full_like(i, np.nan), "labels": lab}, r"`images` has 240 NaN or infinite values"),
])
def test_fake_patches_bad_files_name_the_file(tmp_path, arrays, message):
    path = _write_h5(tmp_path / "bad.h5", **arrays(*_patches()))
    with pytest.raises(DataError, match=re.escape(path) + f": {message}"):
        hdf5_patch_set(str(tmp_path))


def test_fake_patches_bad_folders(tmp_path):
    with pytest.raises(DataError, match=r"no HDF5 files"):
        hdf5_patch_set(str(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'c.h5'}: file not found")):
        hdf5_patch_set(str(tmp_path), ["c.h5"])
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'text.h5'}: not a readable HDF5 file")):
        hdf5_patch_set(str(tmp_path))
