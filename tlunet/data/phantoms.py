"""Synthetic phantoms with exactly known ground truth, for tests and the no-download demos.

Everything here is SYNTHETIC: simple geometric stand-ins for the real images, useful to check that
code runs end to end and that measurements recover known values — never a substitute for results
on real data.
"""

import math
import os

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw

from tlunet.biometry import ellipse_perimeter

# Lung-ultrasound label values (dense and sparse maps).
LUNG_US_CLASSES = ("background", "pleural_line", "a_line", "b_line")


def _speckle(rng, shape, scale=1.5):
    """Rayleigh-like multiplicative speckle, smoothed a little."""
    return ndimage.gaussian_filter(rng.rayleigh(1.0, shape), scale) / 1.25


def fetal_head(size=(256, 256), pixel_size=0.15, seed=0):
    """A synthetic fetal-head ultrasound frame.

    Returns:
        dict: image uint8 (H, W), mask uint8 (H, W) filled head, outline uint8 (H, W) 1-px
        ellipse (HC18-style annotation, 255 on 0), hc_mm (true circumference), pixel_size.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    a = round(rng.uniform(0.25, 0.38) * min(h, w))
    b = round(a * rng.uniform(0.7, 0.9))
    cy, cx = round(h / 2 + rng.uniform(-0.08, 0.08) * h), round(w / 2 + rng.uniform(-0.08, 0.08) * w)
    theta = rng.uniform(0, math.pi)
    mask = np.zeros(size, np.uint8)
    rr, cc = draw.ellipse(cy, cx, b, a, shape=size, rotation=theta)
    mask[rr, cc] = 1
    # The outline samples the same ellipse parametrically (skimage's ellipse_perimeter approximates
    # rotated ellipses with Bezier segments, up to 1.4% off in circumference).
    t = np.linspace(0, 2 * math.pi, 8 * int(a + b), endpoint=False)
    rows = cy + b * np.sin(t) * math.cos(theta) + a * np.cos(t) * math.sin(theta)
    cols = cx + b * np.sin(t) * math.sin(theta) - a * np.cos(t) * math.cos(theta)
    rows, cols = np.round(rows).astype(int), np.round(cols).astype(int)
    keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    outline = np.zeros(size, np.uint8)
    outline[rows[keep], cols[keep]] = 255
    skull = ndimage.binary_dilation(outline > 0, iterations=2)
    tissue = 0.25 + 0.1 * ndimage.gaussian_filter(rng.random(size), 8)
    image = tissue * _speckle(rng, size)
    image[mask > 0] *= 0.6  # brain darker than surrounding tissue
    image[skull] = 0.85 * _speckle(rng, size)[skull] + 0.3
    return {"image": np.clip(image * 255, 0, 255).astype(np.uint8), "mask": mask, "outline": outline,
            "hc_mm": ellipse_perimeter(a, b) * pixel_size, "pixel_size": pixel_size}


def write_hc18_layout(root, n=6, size=(270, 400), seed=0):
    """Writes `n` synthetic fetal heads in the official HC18 layout (two images of subject 001, to
    exercise subject grouping). The true HC in the CSV comes from the drawn ellipse. Returns root."""
    folder = os.path.join(root, "training_set")
    os.makedirs(folder, exist_ok=True)
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for i in range(n):
        name = "001_2HC.png" if i == 1 else f"{i + 1:03d}_HC.png"
        pixel_size = 0.1 + 0.02 * (i % 3)
        head = fetal_head(size, pixel_size, seed + i)
        Image.fromarray(head["image"]).save(os.path.join(folder, name))
        Image.fromarray(head["outline"]).save(os.path.join(folder, name.replace(".png", "_Annotation.png")))
        rows.append(f"{name},{pixel_size},{head['hc_mm']:.2f}")
    with open(os.path.join(root, "training_set_pixel_size_and_HC.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return root


def lung_ultrasound(size=(256, 256), n_b_lines=0, pleural_irregularity=0.0, consolidation=False,
                    n_ribs=2, seed=0):
    """A synthetic linear-probe lung-ultrasound B-mode frame.

    Ribs are bright arcs near the top casting dark acoustic shadows; the pleural line is a bright
    horizontal band between them (wavy when `pleural_irregularity` > 0); A-lines are its fading
    reverberations at multiples of its depth; B-lines are bright vertical comet tails from the
    pleura to the bottom, which erase the A-lines they cross; a consolidation is a hypoechoic,
    tissue-like region under the pleura.

    Returns:
        dict: image uint8 (H, W); rib_mask uint8 (H, W) (ribs, for rib segmentation); dense uint8
        (H, W) labels of `LUNG_US_CLASSES` as filled regions; sparse uint8 (H, W) the same classes
        as 1-px line annotations; params of the frame.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    image = 0.3 * _speckle(rng, size)
    dense = np.zeros(size, np.uint8)
    sparse = np.zeros(size, np.uint8)
    rib_mask = np.zeros(size, np.uint8)
    pleura_y = int(h * rng.uniform(0.25, 0.32))
    rib_w = w // (n_ribs * 6) if n_ribs else 0
    rib_x = [int(w * (k + 0.5) / n_ribs + rng.uniform(-0.05, 0.05) * w) for k in range(n_ribs)]
    shadow = np.zeros(w, bool)
    for x in rib_x:
        rr, cc = draw.ellipse(pleura_y - 4, x, 6, rib_w, shape=size)
        rib_mask[rr, cc] = 1
        shadow[max(0, x - rib_w):x + rib_w] = True
    cols = np.arange(w)
    wave = pleural_irregularity * 6 * np.sin(cols / w * 2 * math.pi * rng.uniform(3, 6)) \
        + pleural_irregularity * 3 * ndimage.gaussian_filter1d(rng.normal(size=w), 3)
    line_y = np.clip(np.round(pleura_y + wave).astype(int), 0, h - 1)
    for x in cols[~shadow]:
        y = line_y[x]
        image[max(0, y - 1):y + 2, x] += 0.6
        dense[max(0, y - 2):y + 3, x] = 1
        sparse[y, x] = 1
    if not consolidation and n_b_lines == 0:  # A-lines: reverberations of the pleura
        for k, depth in enumerate(range(2 * pleura_y, h - 2, pleura_y)):
            amp = 0.35 * 0.7 ** k
            for x in cols[~shadow]:
                image[depth - 1:depth + 2, x] += amp
                dense[depth - 2:depth + 3, x] = 2
                sparse[depth, x] = 2
    b_x = rng.choice(cols[~shadow], size=min(n_b_lines, int((~shadow).sum())), replace=False) \
        if n_b_lines else []
    for x in b_x:
        half = rng.integers(3, 6)
        x0, x1 = max(0, x - half), min(w, x + half + 1)
        image[pleura_y + 2:, x0:x1] = 0.55 + 0.25 * _speckle(rng, (h - pleura_y - 2, x1 - x0))
        dense[pleura_y + 3:, x0:x1] = 3
        sparse[pleura_y + 3:, x] = 3
    if consolidation:
        cx = int(rng.choice(cols[~shadow]))
        rr, cc = draw.ellipse(pleura_y + h * 0.2, cx, h * 0.15, w * 0.15, shape=size)
        keep = rr > pleura_y + 3
        image[rr[keep], cc[keep]] = 0.35 * _speckle(rng, size)[rr[keep], cc[keep]] + 0.1
    for x in cols[shadow]:  # acoustic shadow under each rib
        image[pleura_y + 3:, x] *= 0.15
    image[rib_mask > 0] = 0.9
    return {"image": np.clip(image * 255, 0, 255).astype(np.uint8), "rib_mask": rib_mask,
            "dense": dense, "sparse": sparse,
            "params": {"n_b_lines": len(b_x), "pleural_irregularity": pleural_irregularity,
                       "consolidation": consolidation, "pleura_y": pleura_y}}


def ct_volume(shape=(32, 96, 96), n_lesions=3, spacing=(2.5, 0.8, 0.8), seed=0, lesion_hu=-500.0,
              lesion_radius=(0.04, 0.08)):
    """A synthetic chest-CT volume in Hounsfield units with lesions in the lungs: by default
    ground-glass opacities (-500 HU, COVID-19-like); `lesion_hu=30` and larger `lesion_radius`
    (fractions of the in-plane size) give solid tumour-like lesions (a non-COVID source task).

    Returns:
        dict: image float32 (D, H, W) in HU (air -1000, soft tissue ~40, lung ~-850, ground glass
        ~-500), mask uint8 lesions, lungs uint8, spacing (z, y, x) in mm.
    """
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    body = ((y - h / 2) / (0.45 * h)) ** 2 + ((x - w / 2) / (0.48 * w)) ** 2 <= 1
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= (((y - h / 2) / (0.32 * h)) ** 2 + ((x - w / 2 - side * 0.22 * w) / (0.17 * w)) ** 2
                  + ((z - d / 2) / (0.48 * d)) ** 2) <= 1
    image = np.where(body, 40.0, -1000.0)
    image[lungs] = -850.0
    lesions = np.zeros(shape, bool)
    lung_voxels = np.argwhere(lungs)
    for _ in range(n_lesions):
        cz, cy, cx = lung_voxels[rng.integers(len(lung_voxels))]
        r = rng.uniform(*lesion_radius) * h
        blob = ((z - cz) * spacing[0] / spacing[1] / r) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / r) ** 2 <= 1
        lesions |= blob & lungs
    image[lesions] = lesion_hu
    image = ndimage.gaussian_filter(image, 0.7) + rng.normal(0, 20, shape)
    return {"image": image.astype(np.float32), "mask": lesions.astype(np.uint8),
            "lungs": lungs.astype(np.uint8), "spacing": spacing}


# SYNTHETIC lung-ultrasound classes, a deliberately simple rule (documented in the experiment README):
#   covid:     3-6 B-lines and an irregular pleural line (irregularity 0.6-1.0), no consolidation
#   pneumonia: a subpleural consolidation, 0-2 B-lines, mildly irregular pleura (0.2-0.5)
#   regular:   A-lines (no B-lines), smooth pleura (irregularity 0-0.15), no consolidation
PHANTOM_CLASS_RULE = {
    "covid": {"n_b_lines": (3, 6), "pleural_irregularity": (0.6, 1.0), "consolidation": False},
    "pneumonia": {"n_b_lines": (0, 2), "pleural_irregularity": (0.2, 0.5), "consolidation": True},
    "regular": {"n_b_lines": (0, 0), "pleural_irregularity": (0.0, 0.15), "consolidation": False},
}


def phantom_videos(classes, n_videos, frames_per_video, size, seed=0):
    """Class-labelled SYNTHETIC lung-ultrasound 'videos' (frames sharing one video's parameters).
    Returns (frames uint8 (H, W, 1) list, labels, groups = video ids)."""
    missing = [c for c in classes if c not in PHANTOM_CLASS_RULE]
    if missing:
        raise ValueError(f"the lung-US phantom only knows classes {sorted(PHANTOM_CLASS_RULE)}; not {missing}")
    rng = np.random.default_rng(seed)
    frames, labels, groups = [], [], []
    for label, name in enumerate(classes):
        rule = PHANTOM_CLASS_RULE[name]
        for v in range(n_videos):
            n_b = int(rng.integers(rule["n_b_lines"][0], rule["n_b_lines"][1] + 1))
            irregularity = float(rng.uniform(*rule["pleural_irregularity"]))
            for t in range(frames_per_video):
                f = lung_ultrasound(tuple(size), n_b_lines=n_b, pleural_irregularity=irregularity,
                                    consolidation=rule["consolidation"], seed=int(rng.integers(1 << 30)))
                frames.append(f["image"][..., None])
                labels.append(label)
                groups.append(f"{name}_video{v:03d}")
    return frames, np.asarray(labels), groups
