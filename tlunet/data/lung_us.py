"""Lung-ultrasound B-mode frames with rib-shadow, rib-line and pleural-line masks, in the
publisher's layout (the Worcester Polytechnic Institute "lung-ultrasound image segmentation" data,
github MXHsj/CS541-Deep-Learning-Project; no licence stated, research use).

`root/image/<frame>.jpg` (grey content stored as RGB JPEG) and
`root/mask/<class>/<frame>-<class>.jpg` for the classes `pleural_line`, `rib_shadow` and `rib_line`
(JPEG masks: a pixel belongs to the class where its grey value is >= 128). A frame is named
`<clip>-frame<K>`, e.g. `din-01-L-1-V-frame7` of clip `din-01-L-1-V` and subject `din-01`. The frames
of one clip are near copies: split by clip (or subject), never by frame.

Every frame must have its `pleural_line` and `rib_shadow` files. The publisher has no `rib_line`
file for some frames (24 of 208), and a rib line is visible in some of them: a missing file means
"not annotated", not "no rib line". So a label that includes `rib_line` leaves those frames out
(`missing_rib_line="skip"`, the default); `"empty"` reads them as having no rib line instead.
"""

import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tlunet._suggest import did_you_mean
from tlunet.data.folders import files_by_stem
from tlunet.data.io import IMAGE_SUFFIXES, DataError, read_image, upright
from tlunet.data.pipeline import SegmentationSet

RIB_CLASSES = ("pleural_line", "rib_shadow", "rib_line")
OPTIONAL_CLASSES = ("rib_line",)  # the publisher did not annotate every frame's rib line
MISSING_RIB_LINE = ("skip", "empty")  # a frame without its rib_line file: left out, or read as empty
# Painting order of a label map: a later class wins where two overlap (the thin lines over the shadow).
PAINT_ORDER = ("rib_shadow", "rib_line", "pleural_line")
GROUPINGS = ("clip", "subject", "number")
MASK_THRESHOLD = 128  # JPEG masks: values near 0 and 255, a pixel >= 128 is in the class

_FRAME_RE = re.compile(r"^(?P<clip>(?P<subject>[^-]+-[^-]+)-.+)-frame(?P<k>\d+)$")


@dataclass(frozen=True)
class LungUSFrame:
    """One frame: its name, clip, subject, number within the clip, image path and mask paths
    ({class: path}; a missing `rib_line` file is None)."""

    name: str
    clip: str
    subject: str
    frame: int
    image: str
    masks: dict


def parse_frame_name(path):
    """(clip, subject, frame number) of a frame file (`din-01-L-1-V-frame7.jpg` ->
    ("din-01-L-1-V", "din-01", 7)); DataError naming the file if it is not named so."""
    m = _FRAME_RE.match(os.path.splitext(os.path.basename(path))[0])
    if not m:
        raise DataError(f"{path}: not a lung-US frame name (expected <clip>-frame<K>.jpg, the clip like "
                        "din-01-L-1-V)")
    return m.group("clip"), m.group("subject"), int(m.group("k"))


def _mask_files(root, frames):
    """{class: {frame name: mask path}} of `root/mask/<class>/<frame>-<class>.<ext>`."""
    found = {}
    for cls in RIB_CLASSES:
        folder = os.path.join(root, "mask", cls)
        if cls in OPTIONAL_CLASSES and not os.path.isdir(folder):
            found[cls] = {}
            continue
        stems = files_by_stem(folder)
        found[cls] = {name: stems[f"{name}-{cls}"] for name in frames if f"{name}-{cls}" in stems}
    return found


def find_lung_us_ribs(root):
    """The frames under `root` (the folder holding `image/` and `mask/`), sorted by clip and frame
    number: a list of `LungUSFrame`.

    Raises:
        DataError: a missing folder, no images, a frame name not `<clip>-frame<K>`, a frame without
            its `pleural_line` or `rib_shadow` mask file.
    """
    image_dir = os.path.join(root, "image")
    if not os.path.isdir(image_dir) or not os.path.isdir(os.path.join(root, "mask")):
        problem = "folder not found" if not os.path.isdir(root) else "no image/ or mask/ folder"
        raise DataError(f"{root}: {problem}; expected the publisher's layout image/<frame>.jpg and "
                        f"mask/{{{','.join(RIB_CLASSES)}}}/<frame>-<class>.jpg")
    images = files_by_stem(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = _mask_files(root, images)
    frames = []
    for name, image in images.items():
        clip, subject, k = parse_frame_name(image)
        for cls in RIB_CLASSES:
            if cls not in OPTIONAL_CLASSES and name not in masks[cls]:
                raise DataError(f"{os.path.join(root, 'mask', cls, f'{name}-{cls}.jpg')}: file not found; every "
                                f"frame needs its {cls} mask (the frame is {image})")
        frames.append((clip, k, LungUSFrame(name, clip, subject, k, image,
                                            {cls: masks[cls].get(name) for cls in RIB_CLASSES})))
    return [f for _, _, f in sorted(frames, key=lambda t: t[:2])]


def check_classes(classes, where):
    """`classes` as a tuple of class names: one name (a binary mask) or a non-empty list of distinct
    names (a label map); DataError naming `where` and the valid names otherwise."""
    names = [classes] if isinstance(classes, str) else classes
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{where}: `classes` must be one of {list(RIB_CLASSES)} or a list of them. "
                        f"Received: {classes!r}")
    for name in names:
        if name not in RIB_CLASSES:
            raise DataError(f"{where}: unknown class {name!r}; the classes are {list(RIB_CLASSES)}"
                            f"{did_you_mean(name, RIB_CLASSES)}")
    if len(set(names)) != len(names):
        raise DataError(f"{where}: `classes` {list(names)} names a class twice")
    return tuple(names)


def _image_size(path):
    """(height, width) of an image file as `read_image` reads it (upright), from its header."""
    try:
        with Image.open(path) as im:
            width, height = upright(im).size
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return height, width


def read_class_mask(frame, cls, size=None):
    """bool (H, W) mask of one class of `frame` (grey >= 128); all False for a missing `rib_line`
    file. With `size` (height, width of the frame's image), DataError naming the mask file when its
    size differs."""
    path = frame.masks.get(cls)
    if path is None:
        return np.zeros(size or _image_size(frame.image), bool)
    mask = read_image(path, channels=1)[..., 0] >= MASK_THRESHOLD
    if size is not None and mask.shape != tuple(size):
        raise DataError(f"{path} is {mask.shape[1]}x{mask.shape[0]} but its image {frame.image} is "
                        f"{size[1]}x{size[0]}")
    return mask


def read_frame_mask(frame, classes):
    """uint8 (H, W) mask of `frame`: 0/1 for one class name; for a list of classes a label map, 0
    background and i + 1 where `classes[i]` is, a pleural line winning over a rib line and both over
    a rib shadow where they overlap (`PAINT_ORDER`)."""
    names = check_classes(classes, frame.image)
    size = _image_size(frame.image)
    out = np.zeros(size, np.uint8)
    for cls in sorted(names, key=PAINT_ORDER.index):
        out[read_class_mask(frame, cls, size)] = 1 if isinstance(classes, str) else names.index(cls) + 1
    return out


@dataclass(frozen=True)
class FrameMaskReader:
    """A `SegmentationSet.mask_reader`: the mask key of a frame (`mask_key`) -> its uint8 mask of
    `classes` (`read_frame_mask`)."""

    frames: dict
    classes: object

    def __call__(self, key):
        return read_frame_mask(self.frames[key], self.classes)


def mask_key(root, frame, classes):
    """The path that stands for `frame`'s mask in a `SegmentationSet`: its file of the first of
    `classes` (a path that does not exist for a frame without a `rib_line` file)."""
    cls = check_classes(classes, root)[0]
    return frame.masks.get(cls) or os.path.join(root, "mask", cls, f"{frame.name}-{cls}.jpg")


def lung_us_ribs_set(root, classes="rib_shadow", missing_rib_line="skip"):
    """The frames under `root` as a `SegmentationSet` whose masks are read by `FrameMaskReader`:
    binary (num_classes 2) for one class name, a label map (num_classes len(classes) + 1) for a list.
    Meta per frame: name, clip, subject, image. When `classes` include `rib_line`, frames without a
    `rib_line` file are left out (`missing_rib_line="skip"`) or read as having none (`"empty"`);
    `unannotated_rib_lines(root)` names them.

    Raises:
        DataError: as `find_lung_us_ribs`; an unknown class; a class empty in every frame.
        ValueError: `missing_rib_line` not one of `MISSING_RIB_LINE`.
    """
    names = check_classes(classes, root)
    if missing_rib_line not in MISSING_RIB_LINE:
        raise ValueError(f"`missing_rib_line` must be one of {list(MISSING_RIB_LINE)}. Received: {missing_rib_line!r}")
    frames = find_lung_us_ribs(root)
    if "rib_line" in names and missing_rib_line == "skip":
        frames = [f for f in frames if f.masks["rib_line"] is not None]
    for cls in names:
        if not any(read_class_mask(f, cls).any() for f in frames):  # stops at the first frame that has one
            raise DataError(f"{os.path.join(root, 'mask', cls)}: class {cls!r} is empty in every one of the "
                            f"{len(frames)} frames")
    keys = [mask_key(root, f, classes) for f in frames]
    meta = [{"name": f.name, "clip": f.clip, "subject": f.subject, "image": f.image}
            for f in frames]
    return SegmentationSet([f.image for f in frames], keys, meta, num_classes=len(names) + 1,
                           mask_reader=FrameMaskReader(dict(zip(keys, frames)), classes))


def unannotated_rib_lines(root):
    """The names of the frames under `root` that have no `rib_line` file."""
    return [f.name for f in find_lung_us_ribs(root) if f.masks["rib_line"] is None]


def lung_us_groups(meta, group="clip"):
    """One group per frame of `lung_us_ribs_set(...).meta`: its clip (`din-01-L-1-V`), its subject
    (`din-01`) or its number (`01`: `din-01` and `man-01` together, the most cautious grouping)."""
    if group not in GROUPINGS:
        raise ValueError(f"`group` must be one of {list(GROUPINGS)}{did_you_mean(group, GROUPINGS)}. "
                         f"Received: {group!r}")
    return [m["subject"].split("-", 1)[1] if group == "number" else m[group] for m in meta]
