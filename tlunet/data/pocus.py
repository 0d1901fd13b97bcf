"""POCUS lung-ultrasound frames (COVID-19, pneumonia, healthy) in the POCOVID-Net fold layout.

`root/cross_validation/split<F>/<class>/<video>_frame<K>.jpg` (also `.JPG`, `.png`; a still image
has no `_frame<K>` and is its own video): the publisher's folds, made so that no video is in two.
A frame's group is its video qualified by its class (`covid/Cov-Atlas+(44).gif`); the publisher's
fold of each group is given by `pocus_video_folds`, apart from the loader's 4-tuple.
Born et al., "POCOVID-Net", 2020; licences per source video in `root/dataset_metadata.csv`.
"""

import os
import re

from tlunet._suggest import did_you_mean
from tlunet.data.folders import list_files
from tlunet.data.io import IMAGE_SUFFIXES, DataError

_FOLD_RE = re.compile(r"^split(\d+)$")
_FRAME_RE = re.compile(r"^(?P<video>.+)_frame(?P<k>\d+)$")


def video_of(filename):
    """(video, frame number) of a frame file: `Cov-Atlas+(44).gif_frame12.jpg` ->
    ("Cov-Atlas+(44).gif", 12); a still image is its own video, frame 0."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    m = _FRAME_RE.match(stem)
    return (m.group("video"), int(m.group("k"))) if m else (stem, 0)


def fold_folders(root):
    """{fold name: folder} of the `split<F>` folders under `root/cross_validation` (or under `root`
    itself, when it is that folder), in fold order; DataError naming `root` if there are none."""
    base = os.path.join(root, "cross_validation")
    base = base if os.path.isdir(base) else root
    if not os.path.isdir(base):
        raise DataError(f"{root}: folder not found")
    folds = sorted((d for d in os.listdir(base) if _FOLD_RE.match(d) and os.path.isdir(os.path.join(base, d))),
                   key=lambda d: int(_FOLD_RE.match(d).group(1)))
    if not folds:
        raise DataError(f"{root}: no split<F> folders; expected the POCOVID-Net layout "
                        "cross_validation/split<F>/<class>/<video>_frame<K>.jpg")
    return {d: os.path.join(base, d) for d in folds}


def _chosen_folds(root, folds):
    """{fold name: folder} of the folds asked for (names `split0` or numbers 0; None: all)."""
    present = fold_folders(root)
    if folds is None:
        return present
    names = [f"split{f}" if isinstance(f, int) and not isinstance(f, bool) else f
             for f in (folds if isinstance(folds, (list, tuple)) else [folds])]
    for name in names:
        if name not in present:
            raise DataError(f"{root}: no fold {name!r}; the folds are {list(present)}{did_you_mean(name, present)}")
    return {name: present[name] for name in dict.fromkeys(names)}


def _fold_items(fold, folder, classes):
    """Items {path, class, label, group, fold, frame} of one fold folder in class, video and frame
    order, checking its class folders against `classes` (None: the folders found, sorted)."""
    found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if classes is not None and sorted(found) != sorted(classes):
        raise DataError(f"{folder}: class folders {found} do not match `classes` {list(classes)}")
    order = {name: i for i, name in enumerate(classes if classes is not None else found)}
    items = []
    for cls in found:
        for f in list_files(os.path.join(folder, cls), IMAGE_SUFFIXES):
            video, k = video_of(f)
            items.append({"path": os.path.join(folder, cls, f), "class": cls, "label": order[cls],
                          "group": f"{cls}/{video}", "fold": fold, "frame": k})
    return sorted(items, key=lambda i: (i["group"], i["frame"], i["path"]))


def find_pocus(root, classes=None, folds=None, every=1, max_frames=None):
    """The frame files of the POCOVID-Net folds under `root`: items {path, class, label (index into
    `classes`), group (`<class>/<video>`), fold (`split<F>`), frame (number in its video)}, in fold,
    class, video and frame order. `every` keeps every k-th frame of a video, `max_frames` at most
    that many of it.

    Raises:
        DataError: no fold folders, an unknown fold, class folders that differ from `classes`, a fold
            without frames, a class of `classes` without frames in any fold, one video in two folds.
    """
    whole = lambda n: isinstance(n, int) and not isinstance(n, bool) and n >= 1  # noqa: E731
    if not whole(every) or not (max_frames is None or whole(max_frames)):
        raise ValueError(f"`every` must be a whole number >= 1 and `max_frames` one or null. Received: "
                         f"every={every!r}, max_frames={max_frames!r}")
    items, fold_of = [], {}
    for fold, folder in _chosen_folds(root, folds).items():
        found = _fold_items(fold, folder, classes)
        if not found:
            raise DataError(f"{folder}: no frames ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
        for item in found:
            first = fold_of.setdefault(item["group"], item)
            if first["fold"] != fold:
                raise DataError(f"{item['path']}: video {item['group']!r} is also in {first['fold']} "
                                f"({first['path']}); the publisher's folds keep each video in one")
        items += found
    empty = [c for c in (classes or []) if not any(i["class"] == c for i in items)]
    if empty:
        raise DataError(f"{root}: class {empty[0]!r} has no frames in {', '.join(_chosen_folds(root, folds))}; every "
                        "class needs frames to learn and test it")
    by_video = {}
    for item in items:  # each video's frames are in frame order
        by_video.setdefault(item["group"], []).append(item)
    kept = {id(i) for frames in by_video.values() for i in frames[::every][:max_frames]}
    return [i for i in items if id(i) in kept]


def pocus_video_folds(root, folds=None):
    """{group (`<class>/<video>`, as the `pocus_folds` kind's groups): its publisher fold
    (`split<F>`)} of the folds under `root`; e.g. `[fold_of[g] for g in groups]` gives each frame's
    fold. Reads the file names only."""
    return {item["group"]: item["fold"] for item in find_pocus(root, folds=folds)}
