"""The data kinds a config's `kind` names: one registry that every runner and `tlunet train --kind`
read.

A kind is a loader for one task's data:

| task | a loader returns |
|---|---|
| `image` | (SegmentationSet, groups (one per case: its subject, clip or video), description) |
| `volume` | ([{case, image (D, H, W) float32 in [0, 1], mask uint8, spacing}], description) |
| `frames` | (frames, labels, groups, description), the classes named by the config's `classes` |
| `lines` | a `LineSet`: line-label segmentation sources at `image_size`, `dense` or `sparse` labels |

A loader is called as `load(block, root=..., seed=..., **task_arguments)`: `block` is the config's
data mapping as written, `root` its `root` resolved to a path (or None, or `download`).
"""

import dataclasses
import re
from typing import Callable

import numpy as np

from tlunet._suggest import did_you_mean
from tlunet.data.download import download_hc18
from tlunet.data.folders import find_class_folders, find_pairs, frames_by_group
from tlunet.data.hc18 import hc18_set
from tlunet.data.io import DataError, image_channels, read_image, read_mask
from tlunet.data.lines import PHANTOM_CLASSES, convert_labels
from tlunet.data.lung_us import lung_us_groups, lung_us_ribs_set, unannotated_rib_lines
from tlunet.data.nifti import find_nifti_pairs, hu_window, load_nifti
from tlunet.data.patches import hdf5_patch_set
from tlunet.data.phantoms import ct_volume, lung_ultrasound, phantom_videos
from tlunet.data.pipeline import SegmentationSet, load_arrays, resize_pair
from tlunet.data.pocus import find_pocus

from tlunet.resources import SAMPLE_PREFIX


@dataclasses.dataclass(frozen=True)
class DataKind:
    """One registered kind: its name, task, loader, the block keys it reads beyond the task's
    common ones, and whether it reads a folder (`root`)."""
    name: str
    task: str
    load: Callable
    keys: frozenset = frozenset()
    reads_folder: bool = False
    description: str = ""


TASKS = ("image", "volume", "frames", "lines")
DATA_KINDS = {task: {} for task in TASKS}  # {task: {name: DataKind}}: one name may serve two tasks


def register_data_kind(name, task, keys=(), reads_folder=False):
    """Decorator: registers `load` as the loader of kind `name` for `task` (see the module's table);
    its docstring's first line is the kind's description."""
    if task not in TASKS:
        raise ValueError(f"data kind {name!r}: task {task!r} is not one of {list(TASKS)}")

    def register(load):
        if name in DATA_KINDS[task]:
            raise ValueError(f"data kind {name!r} of task {task!r} is registered twice")
        description = (load.__doc__ or "").strip().splitlines()[0] if load.__doc__ else ""
        DATA_KINDS[task][name] = DataKind(name, task, load, frozenset(keys) | ({"root"} if reads_folder else set()),
                                    reads_folder, description)
        return load
    return register


def kinds_of(task, folders_only=False):
    """The names of the kinds registered for `task`, sorted (only those that read a folder, if asked)."""
    return sorted(k.name for k in DATA_KINDS[task].values() if k.reads_folder or not folders_only)


def data_kind(name, task):
    """The registered kind `name` of `task`; ValueError naming the valid ones (and the nearest) if none."""
    kind = DATA_KINDS[task].get(name)
    if kind is None:
        raise ValueError(f"kind {name!r} is not one of {kinds_of(task)}{did_you_mean(name, kinds_of(task))}")
    return kind


# ------------------------------------------------------------------------------ image (2D segmentation)
@register_data_kind("hc18", "image", reads_folder=True)
def _hc18(block, root, seed):
    """HC18 fetal-head ultrasound (`root: download` fetches the official files); grouped by subject."""
    if root == "download":  # the official files from Zenodo, once, MD5-checked
        root = download_hc18()
    data = hc18_set(root)
    given = str(block.get("root"))
    source = f"HC18 bundled sample `{given[len(SAMPLE_PREFIX):]}`" if given.startswith(SAMPLE_PREFIX) else f"HC18 ({root})"
    return data, [m["subject"] for m in data.meta], source


@register_data_kind("pairs", "image", keys=("layout", "subject"), reads_folder=True)
def _pairs(block, root, seed):
    """Image and mask folders in a known layout (`tlunet.data.LAYOUTS`); grouped by subject.

    `subject`: a regular expression whose first group (or whole match) in a file's stem names its
    subject, e.g. `^(p\\d+)_` for `p01_a.png`, `p01_b.png`; default: each image its own subject.
    """
    data = find_pairs(root, block.get("layout", "generic"))
    stems = [m["stem"] for m in data.meta]
    pattern = block.get("subject")
    return data, stems if pattern is None else subjects_of(stems, pattern, root), root


def subjects_of(stems, pattern, where):
    """The subject of each file stem: the first group (else the whole match) of the regular
    expression `pattern` searched in it. DataError naming `where`, the pattern and a stem it does
    not match; ValueError for a pattern that is not a regular expression."""
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"subject {pattern!r} is not a regular expression ({e})") from None
    subjects = []
    for stem in stems:
        m = regex.search(stem)
        if m is None:
            raise DataError(f"{where}: subject pattern {pattern!r} does not match the file {stem!r}; every file "
                            "name must say its subject")
        subjects.append(m.group(1) if regex.groups else m.group(0))
    return subjects


@register_data_kind("lung_us_phantom", "image", keys=("n", "phantom_size"))
def _lung_us_phantom(block, root, seed):
    """SYNTHETIC lung-ultrasound frames with rib masks, generated in memory."""
    frames = [lung_ultrasound(tuple(block.get("phantom_size", [256, 256])), n_b_lines=i % 4,
                              pleural_irregularity=(i % 3) / 2, seed=seed * 1000 + i)
              for i in range(block.get("n", 60))]
    names = [f"phantom_{i:03d}" for i in range(len(frames))]
    data = SegmentationSet(names, names, [{"name": n} for n in names],
                           arrays=(np.stack([f["image"][..., None] for f in frames]),
                                   np.stack([f["rib_mask"] for f in frames])))
    return data, list(range(len(frames))), "synthetic lung-ultrasound phantom"  # one frame per "subject"


@register_data_kind("lung_us_ribs", "image", keys=("classes", "group", "missing_rib_line"), reads_folder=True)
def _lung_us_ribs(block, root, seed):
    """Lung-ultrasound frames with rib-shadow, rib-line and pleural-line masks (publisher's layout); grouped by clip.

    `classes`: one of `pleural_line`, `rib_shadow` (default), `rib_line` (a 0/1 mask), or a list of
    them (a label map, 1.. in the list's order; `tlunet.data.lung_us.read_frame_mask` says which wins
    where two overlap). `group`: `clip` (default), `subject` (`din-01`) or `number` (`01`).
    `missing_rib_line`: `skip` (default) leaves out the frames whose rib line was not annotated when
    `classes` include it; `empty` reads them as having none.
    """
    classes = block.get("classes", "rib_shadow")
    data = lung_us_ribs_set(root, classes, block.get("missing_rib_line", "skip"))
    groups = lung_us_groups(data.meta, block.get("group", "clip"))
    shown = classes if isinstance(classes, str) else "+".join(classes)
    return data, groups, (f"lung-US ribs ({root}, {len(data)} frames of {len(set(groups))} groups, {shown}"
                          f"{_rib_lines_note(root, classes, block)})")


def _rib_lines_note(root, classes, block):
    """"; N frames without a rib_line file left out" when that happened, else ""."""
    if "rib_line" not in ([classes] if isinstance(classes, str) else classes) or \
            block.get("missing_rib_line", "skip") != "skip":
        return ""
    left_out = len(unannotated_rib_lines(root))
    return f"; {left_out} frames without a rib_line file left out" if left_out else ""


@register_data_kind("hdf5_patches", "image", keys=("files",), reads_folder=True)
def _hdf5_patches(block, root, seed):
    """2D patches in HDF5 files, `images` and `labels` (N, 1, H, W); grouped by file (no patient ids)."""
    data, groups = hdf5_patch_set(root, block.get("files"))
    return data, groups, f"HDF5 patches ({root}: {', '.join(dict.fromkeys(groups))}; {len(data)} patches)"


def colour_channels(block, root):
    """3 when the images of an image data block have colour, else 1 (`tlunet.data.image_channels`:
    grey scans saved as RGB files count as grey)."""
    data, _, _ = data_kind(block["kind"], "image").load(block, root=root, seed=0)
    if data.arrays is None:
        return image_channels(data.images)
    images = data.arrays[0][:8].astype(np.int16)
    return 3 if images.shape[-1] == 3 and np.abs(images - images.mean(-1, keepdims=True)).mean() > 2.0 else 1


def load_image_set(block, root, seed=0):
    """(images uint8 (N, H, W, C), masks uint8 (N, H, W), meta, groups, description) of an image data
    block, resized to its `image_size` with its `channels`, cut to its first `limit` cases if set."""
    data, groups, source = data_kind(block["kind"], "image").load(block, root=root, seed=seed)
    if block.get("limit"):
        keep = list(range(min(block["limit"], len(data))))
        data, groups = data.subset(keep), [groups[i] for i in keep]
    size = tuple(block["image_size"])
    if data.arrays is None:
        images, masks = load_arrays(data, size, channels=block["channels"])
        return images, masks, data.meta, groups, source
    for meta, image in zip(data.meta, data.arrays[0]):
        meta["original_size"] = image.shape[:2]
    return (*_at_size(*data.arrays, size), data.meta, groups, source)


# ------------------------------------------------------------------------------ volume (3D segmentation)
@register_data_kind("ct_phantom", "volume",
                    keys=("n", "shape", "spacing", "n_lesions", "lesion_hu", "lesion_radius", "seed_offset"))
def _ct_phantom(block, root, seed):
    """SYNTHETIC CT volumes (tlunet.data.phantoms.ct_volume), HU-windowed like real scans."""
    kw = {k: (tuple(block[k]) if isinstance(block[k], list) else block[k])
          for k in ("shape", "spacing", "n_lesions", "lesion_hu", "lesion_radius") if k in block}
    cases = []
    for i in range(block.get("n", 10)):
        ct = ct_volume(seed=seed * 1000 + block.get("seed_offset", 0) + i, **kw)
        cases.append({"case": f"phantom_{i:03d}", "image": hu_window(ct["image"], tuple(block["window"])),
                      "mask": ct["mask"], "spacing": ct["spacing"]})
    desc = f"synthetic CT phantom ({len(cases)} volumes {tuple(cases[0]['image'].shape)}, lesions " \
           f"{block.get('lesion_hu', -500):g} HU)"
    return cases, desc


@register_data_kind("nifti", "volume", keys=("layout",), reads_folder=True)
def _nifti(block, root, seed):
    """NIfTI image and label volumes in a known layout (`tlunet.data.NIFTI_LAYOUTS`)."""
    spacing = block.get("target_spacing")
    cases = []
    for case, image, mask in find_nifti_pairs(root, block.get("layout", "generic")):
        vol = load_nifti(image, mask, window=tuple(block["window"]),
                         target_spacing=None if spacing is None else tuple(spacing))
        cases.append({"case": case, "image": vol["image"], "mask": (vol["mask"] > 0).astype(np.uint8),
                      "spacing": vol["spacing"]})
    return cases, f"{root} ({len(cases)} NIfTI volumes)"


def load_volumes(block, root, seed=0):
    """([{case, image, mask, spacing}], description) of a volume data block, cut to its `limit`."""
    cases, desc = data_kind(block["kind"], "volume").load(block, root=root, seed=seed)
    return (cases[:block["limit"]] if block.get("limit") else cases), desc


# ------------------------------------------------------------------------------ frames (classification)
@register_data_kind("lung_us_videos", "frames", keys=("n_videos", "frames_per_video", "phantom_size"))
def _frames_phantom(block, root, seed, classes):
    """SYNTHETIC lung-ultrasound videos, one class each; grouped by video."""
    frames, labels, groups = phantom_videos(classes, block.get("n_videos", 8), block.get("frames_per_video", 6),
                                            block.get("phantom_size", block["image_size"]), seed=seed)
    return frames, labels, groups, f"synthetic lung-US phantom videos ({len(set(groups))} videos, {len(frames)} frames)"


@register_data_kind("class_folders", "frames", keys=("every", "max_frames"), reads_folder=True)
def _class_folders(block, root, seed, classes):
    """One folder per class of videos or images; grouped by video."""
    items, found = find_class_folders(root)
    if sorted(found) != sorted(classes):
        raise DataError(f"{root}: class folders {found} do not match `classes` {list(classes)}")
    order = {name: i for i, name in enumerate(classes)}
    for item in items:
        item["label"] = order[item["class"]]
    frames, labels, groups = frames_by_group(items, every=block.get("every", 1), max_frames=block.get("max_frames"))
    return frames, labels, groups, f"{root} ({len(items)} videos/images, {len(frames)} frames)"


@register_data_kind("pocus_folds", "frames", keys=("folds", "every", "max_frames"), reads_folder=True)
def _pocus_folds(block, root, seed, classes):
    """POCUS lung-ultrasound frames in the POCOVID-Net fold folders; grouped by video.

    `folds`: the `split<F>` folders to read (names or numbers; default all). `every`/`max_frames`:
    every k-th frame of a video, at most that many. Each group's publisher fold:
    `tlunet.data.pocus_video_folds(root)`.
    """
    items = find_pocus(root, classes, block.get("folds"), block.get("every", 1), block.get("max_frames"))
    frames, labels, groups = frames_by_group(items)
    folds = ", ".join(dict.fromkeys(i["fold"] for i in items))
    return frames, labels, groups, f"POCUS frames ({root}: {folds}; {len(set(groups))} videos, {len(frames)} frames)"


def load_frames(block, root, seed, classes):
    """(frames, labels, groups, description) of a frames data block, cut to its first `limit` frames."""
    frames, labels, groups, desc = data_kind(block["kind"], "frames").load(block, root=root, seed=seed, classes=classes)
    limit = block.get("limit")
    return (frames[:limit], labels[:limit], groups[:limit], desc) if limit else (frames, labels, groups, desc)


# ------------------------------------------------------------------------------ lines (segmentation sources)
@dataclasses.dataclass(frozen=True)
class LineSet:
    """A line-label segmentation set: uint8 images (N, H, W, 1) and label maps (N, H, W) at the
    block's `image_size`, with labels of the kind asked for (`dense` or `sparse`), one group per
    frame (splits keep a group on one side), the class names of labels 1.., and a description."""
    images: np.ndarray
    masks: np.ndarray
    groups: list
    class_names: tuple
    description: str


def _at_size(images, masks, size):
    """uint8 images (N, H, W, 1) and masks (N, H, W) resized to `size` (bilinear, nearest)."""
    pairs = [resize_pair(i, m, tuple(size)) for i, m in zip(images, masks)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@register_data_kind("lung_us_lines", "lines", keys=("n", "phantom_size"))
def _lines_phantom(block, root, seed, label_kind):
    """SYNTHETIC lung-ultrasound frames with pleural, A- and B-line labels; one group per frame."""
    rng = np.random.default_rng(seed + 7)
    images, masks = [], []
    for _ in range(block["n"]):
        f = lung_ultrasound(tuple(block.get("phantom_size", block["image_size"])), n_b_lines=int(rng.integers(0, 6)),
                            pleural_irregularity=float(rng.uniform(0, 1)), consolidation=bool(rng.random() < 0.3),
                            seed=int(rng.integers(1 << 30)))
        images.append(f["image"][..., None])
        masks.append(f[label_kind])
    images, masks = _at_size(images, masks, block["image_size"])
    return LineSet(images, masks, list(range(len(images))), PHANTOM_CLASSES,
                   f"synthetic lung-US frames with {label_kind} line labels ({len(images)})")


@register_data_kind("pairs", "lines", keys=("layout", "labels"), reads_folder=True)
def _lines_pairs(block, root, seed, label_kind):
    """Image and label folders (0 background, 1 pleural line, 2 A-line, 3 B-line); labels dense
    unless `labels: sparse`, the other kind made by `tlunet.data.lines`; one group per frame."""
    data = find_pairs(root, block.get("layout", "generic"), num_classes=4)
    images, masks = [], []
    for image_path, mask_path in zip(data.images, data.masks):
        images.append(read_image(image_path, channels=1))
        mask = read_mask(mask_path, binary=False, num_classes=4)
        masks.append(mask if block.get("labels", "dense") == label_kind else convert_labels(mask, label_kind))
    images, masks = _at_size(images, masks, block["image_size"])
    return LineSet(images, masks, list(range(len(images))), PHANTOM_CLASSES,
                   f"{root} ({len(images)} frames, {label_kind} labels)")


RIB_LINE_CLASSES = ("pleural_line", "rib_line", "rib_shadow")  # labels 1-3: two horizontal lines, one vertical band


@register_data_kind("lung_us_ribs", "lines", keys=("classes", "group", "missing_rib_line"), reads_folder=True)
def _lines_lung_us_ribs(block, root, seed, label_kind):
    """Real lung-ultrasound frames with hand-painted pleural-line, rib-line and rib-shadow regions;
    grouped by clip.

    Dense labels are the publisher's painted regions. Sparse labels trace each one with a 1-pixel
    curve, made after resizing to `image_size` so that no line is lost to the resize: the pleural
    and rib lines by their middle row, a rib shadow by its middle column (`tlunet.data.lines`).
    `classes`: the structures to label, 1.. in order (default pleural_line, rib_line, rib_shadow).
    `missing_rib_line`: as for the image kind (`skip` leaves out frames whose rib line was not annotated).
    """
    classes = tuple(block.get("classes") or RIB_LINE_CLASSES)
    data = lung_us_ribs_set(root, list(classes), block.get("missing_rib_line", "skip"))
    groups = lung_us_groups(data.meta, block.get("group", "clip"))
    images = [read_image(path, channels=1) for path in data.images]
    images, masks = _at_size(images, [data.read_mask(key) for key in data.masks], block["image_size"])
    if label_kind == "sparse":
        masks = np.stack([convert_labels(m, "sparse", classes) for m in masks])
    return LineSet(images, masks, groups, classes,
                   f"lung-US ribs ({root}: {len(images)} frames of {len(set(groups))} clips, {label_kind} "
                   f"{'+'.join(classes)} labels{_rib_lines_note(root, classes, block)})")


def load_line_set(block, root, seed, label_kind):
    """The `LineSet` of a line-label data block (`label_kind` dense or sparse), cut to its first
    `limit` frames."""
    lines = data_kind(block["kind"], "lines").load(block, root=root, seed=seed, label_kind=label_kind)
    limit = block.get("limit")
    if not limit:
        return lines
    return dataclasses.replace(lines, images=lines.images[:limit], masks=lines.masks[:limit],
                               groups=lines.groups[:limit])
