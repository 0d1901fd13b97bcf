"""Builds data/hc18_small, the HC18 sample bundled for the quick main job, from the official
training-set layout (run once by a maintainer; users never need it).

Every image is downscaled x0.25 (800x540 -> 200x135, area averaging) and its skull outline is
redrawn 1 px wide from the ellipse fitted to the original annotation, at the new scale; the pixel
size in the CSV is multiplied by 4 and the head circumference kept. A seeded 15 % of the fetuses is
left out, so the bundle's models can be checked on fetuses they never saw.

    python tools/make_hc18_small.py ../shared/data/hc18 data/hc18_small
"""

import argparse
import csv
import os
import shutil

import numpy as np
from PIL import Image

from tlunet.data.hc18 import CSV_NAME, find_hc18
from tlunet.biometry import fit_ellipse
from tlunet.data.io import read_mask

SCALE = 4
HOLDOUT = 0.15


def outline(shape, center, semi_axes, angle):
    """1-px outline of an ellipse: the pixels the curve passes through, sampled densely."""
    (r0, c0), (a, b) = center, semi_axes
    t = np.linspace(0, 2 * np.pi, 20000, endpoint=False)
    # fit_ellipse's angle: first axis from x (columns) towards y (rows).
    x, y = a * np.cos(t), b * np.sin(t)
    cols = c0 + x * np.cos(angle) - y * np.sin(angle)
    rows = r0 + x * np.sin(angle) + y * np.cos(angle)
    out = np.zeros(shape, np.uint8)
    rr, cc = np.round(rows).astype(int), np.round(cols).astype(int)
    keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    out[rr[keep], cc[keep]] = 255
    return out


def held_out_subjects(records, seed=2026):
    subjects = sorted({r.subject for r in records})
    rng = np.random.default_rng(seed)
    rng.shuffle(subjects)
    return set(subjects[:round(HOLDOUT * len(subjects))])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="HC18 root (training_set/ and the CSV)")
    parser.add_argument("out", help="output folder (replaced)")
    args = parser.parse_args()
    records = find_hc18(args.source)
    held = held_out_subjects(records)
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(os.path.join(args.out, "training_set"))
    rows = []
    for r in records:
        if r.subject in held:
            continue
        image = Image.open(r.image).convert("L")
        w, h = image.size
        small = image.resize((w // SCALE, h // SCALE), Image.BOX)
        name = os.path.basename(r.image)
        small.save(os.path.join(args.out, "training_set", name), optimize=True)
        fit = fit_ellipse(np.argwhere(read_mask(r.annotation, binary=True) > 0))
        # Pixel centres: original pixel i covers [i, i+1), so its centre maps to (i + 0.5) / SCALE - 0.5.
        center = tuple((np.asarray(fit["center"]) + 0.5) / SCALE - 0.5)
        semi = tuple(np.asarray(fit["semi_axes"]) / SCALE)
        Image.fromarray(outline((h // SCALE, w // SCALE), center, semi, fit["angle"])).save(
            os.path.join(args.out, "training_set", name.replace(".png", "_Annotation.png")), optimize=True)
        rows.append([name, f"{r.pixel_size * SCALE:.10f}", f"{r.hc_mm:g}"])
    with open(os.path.join(args.out, CSV_NAME), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        writer.writerows(rows)
    print(f"{len(rows)} images of {len({r[0].split('_')[0] for r in rows})} fetuses written to {args.out}; "
          f"{len(records) - len(rows)} images of {len(held)} fetuses left out")


if __name__ == "__main__":
    main()
