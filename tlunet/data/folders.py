"""Folder layouts: paired image/mask folders and class folders of images or videos."""

import os
import numpy as np
from PIL import Image

from tlunet._suggest import did_you_mean, did_you_mean_parent
from tlunet.data.io import IMAGE_SUFFIXES, DataError, image_pixels, read_image_frames
from tlunet.data.pipeline import SegmentationSet

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".gif")

# Known layouts: (image folder, mask folder, number of classes).
LAYOUTS = {
    "generic": ("images", "masks", 2),
    "ecssd": ("images", "ground_truth_mask", 2),
    "covid_ct": ("images", "masks", 2),
    "covid_ct_multiclass": ("images", "masks_multiclass", 3),
}


def list_files(folder, suffixes):
    """Sorted names of the files in `folder` ending in one of `suffixes` (hidden files skipped).

    Raises:
        DataError: `folder` is missing, or an entry named like one of these files is a directory
            (`scan.png/`) or not a regular file (a broken link): listing it would fail later,
            skipping it would drop data silently.
    """
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(suffixes) and not f.startswith("."))
    for f in names:
        path = os.path.join(folder, f)
        if os.path.isdir(path):
            raise DataError(f"{path}: is a directory, not an image (rename or move it out of {folder})")
        if not os.path.isfile(path):
            raise DataError(f"{path}: is not a regular file (a broken link?); fix or remove it")
    return names


def _check_pair_folders(root, images, masks, layout):
    """DataError naming the folder the user gave and, in one line, the layout expected there, when
    either sub-folder is missing; pointing at the parent when `root` is evidently the images (or
    masks) folder itself (`--data my_data/images`)."""
    missing = [d for d in (images, masks) if not os.path.isdir(os.path.join(root, d))]
    if not missing:
        return
    if not os.path.isdir(root):
        problem = "is a file, not a folder" if os.path.exists(root) else "folder not found"
    else:
        problem = f"no {' or '.join(d + '/' for d in missing)} folder"
    named = f" (layout {layout})" if layout else ""
    raise DataError(f"{root}: {problem}; expected {os.path.join(root, images)}/ and {os.path.join(root, masks)}/ "
                    f"with matching file names{named}{did_you_mean_parent(root, (images, masks), (images, masks))}"
                    f"{_other_layout(root)}")


def _other_layout(root):
    """'; it looks like layout X' (or HC18) when `root` holds another layout's folders, else ''."""
    if os.path.isdir(os.path.join(root, "training_set")):
        return "; it looks like HC18 (--kind hc18)"
    fits = [name for name, (i, m, _) in LAYOUTS.items() if os.path.isdir(os.path.join(root, i))
            and os.path.isdir(os.path.join(root, m))]
    return f"; it has the folders of layout {fits[0]} (--layout {fits[0]})" if fits else ""


def files_by_stem(folder):
    """{stem: path} of the images in `folder`; DataError naming two files with one stem."""
    out = {}
    for f in list_files(folder, IMAGE_SUFFIXES):
        stem = os.path.splitext(f)[0]
        if stem in out:
            raise DataError(f"{folder}: two files with stem {stem!r}: {out[stem]} and {f}")
        out[stem] = os.path.join(folder, f)
    return out


def find_pairs(root, layout="generic", image_dir=None, mask_dir=None, num_classes=None):
    """Images and masks in two folders, matched by file stem (`images/12.jpg` <-> `masks/12.png`).

    Args:
        root: folder holding the two sub-folders.
        layout: a key of `LAYOUTS` giving the folder names and class count.
        image_dir, mask_dir, num_classes: override the layout's values.

    Returns:
        `SegmentationSet` with meta {"stem": ...}.

    Raises:
        DataError: a missing folder, an image without a mask or a mask without an image, two files
            with the same stem.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}{did_you_mean(layout, LAYOUTS)}. Valid: {list(LAYOUTS)}")
    default_images, default_masks, default_classes = LAYOUTS[layout]
    named = None if image_dir or mask_dir else layout  # folder names overridden: no layout to name
    image_dir, mask_dir = image_dir or default_images, mask_dir or default_masks
    _check_pair_folders(root, image_dir, mask_dir, named)
    image_dir, mask_dir = os.path.join(root, image_dir), os.path.join(root, mask_dir)
    num_classes = num_classes or default_classes


    images, masks = files_by_stem(image_dir), files_by_stem(mask_dir)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DataError(f"{len(no_mask)} image(s) have no mask in {mask_dir}, e.g. {images[no_mask[0]]}")
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DataError(f"{len(no_image)} mask(s) have no image in {image_dir}, e.g. {masks[no_image[0]]}")
    stems = sorted(images, key=lambda s: (len(s), s))  # numeric names in numeric order
    return SegmentationSet([images[s] for s in stems], [masks[s] for s in stems],
                           [{"stem": s} for s in stems], num_classes=num_classes)


def find_class_folders(root, suffixes=IMAGE_SUFFIXES + VIDEO_SUFFIXES):
    """POCUS-style `root/<class>/<file>` listing.

    Returns:
        (items, classes): items are dicts {"path", "label", "class", "group"} where group is the
        file stem (a video and the frames taken from it share it); classes are sorted names.
    """
    if not os.path.isdir(root):
        raise DataError(f"{root}: folder not found")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root}: no class sub-folders")
    items = []
    for label, name in enumerate(classes):
        for f in list_files(os.path.join(root, name), suffixes):
            items.append({"path": os.path.join(root, name, f), "label": label, "class": name,
                          "group": f"{name}/{os.path.splitext(f)[0]}"})
    if not items:
        raise DataError(f"{root}: the class folders {classes} hold no images or videos")
    return items, classes


def read_frames(path, every=1, max_frames=None, channels=1):
    """Frames of a video (or a single image) as uint8 (T, H, W, channels).

    GIFs and images are read with Pillow, as `read_image` reads them (EXIF orientation, 16-bit
    and float pixels scaled to 0-255); .mp4/.avi/.mov need imageio with its pyav or ffmpeg plugin
    (`pip install av`).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".avi", ".mov"):
        frames = read_image_frames(path, channels)
    elif os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not an image or video")
    elif not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    else:
        frames = _video_frames(path, ext, channels)
    frames = frames[::every][:max_frames]
    if not frames:
        raise DataError(f"{path}: no frames")
    return np.stack(frames)


def _video_frames(path, ext, channels):
    """uint8 (H, W, channels) frames of a video file, read with imageio."""
    try:
        import imageio.v3 as iio
        return [image_pixels(Image.fromarray(f), path, channels) for f in iio.imiter(path)]
    except ImportError as e:  # imageio, or the plugin it needs for this container
        raise DataError(f"{path}: reading {ext} videos needs `pip install imageio av`") from e
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported against the file
        raise DataError(f"{path}: not a readable image or video ({type(e).__name__}: {e})") from e


def frames_by_group(items, every=1, max_frames=None, channels=1):
    """Expands class-folder items into frames: (frames list, labels, groups)."""
    frames, labels, groups = [], [], []
    for item in items:
        for frame in read_frames(item["path"], every, max_frames, channels):
            frames.append(frame)
            labels.append(item["label"])
            groups.append(item["group"])
    return frames, np.asarray(labels), groups
