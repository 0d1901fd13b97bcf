"""Dense and sparse labels of lung-ultrasound lines (Gare et al. 2022), and the conversion between them.

A label image holds class indices, 0 background. *Dense* labels paint each structure as the region
it occupies (a band a few pixels thick for the pleural line and A-lines, the full width of a
B-line's comet tail or of a rib's shadow); *sparse* labels trace each structure with a 1-pixel
curve across its thickness, as an annotator clicking along it would.

Which way a class's curve runs depends on the structure (`ORIENTATIONS`): the pleural line,
A-lines and rib lines are horizontal bands, thinned to their middle row; B-lines and rib shadows
run down the image, thinned to their middle column. The default class indices are those of
`tlunet.data.phantoms.LUNG_US_CLASSES`: 1 pleural line, 2 A-line, 3 B-line (`PHANTOM_CLASSES`).
"""

import numpy as np
from scipy import ndimage

# Which way each structure runs across the image (by class name).
ORIENTATIONS = {"pleural": "horizontal", "a_line": "horizontal", "b_line": "vertical",
                "pleural_line": "horizontal", "rib_line": "horizontal", "rib_shadow": "vertical"}
PHANTOM_CLASSES = ("pleural", "a_line", "b_line")  # label 1, 2, 3 of the phantom frames
# Half-widths (pixels) used to grow sparse lines back into regions, per class index of the phantom.
DEFAULT_HALF_WIDTHS = {1: 2, 2: 2, 3: 4}


def orientations_of(class_names):
    """{label: "horizontal" | "vertical"} of the classes named, labels 1.. in order; ValueError
    naming a class whose direction is unknown."""
    unknown = [n for n in class_names if n not in ORIENTATIONS]
    if unknown:
        raise ValueError(f"no line direction for class(es) {unknown}: known {sorted(ORIENTATIONS)}")
    return {i: ORIENTATIONS[n] for i, n in enumerate(class_names, start=1)}


def _check(labels, name, classes):
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D label image (H, W). Received: shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > classes or not np.all(np.mod(labels, 1) == 0)):
        raise ValueError(f"`{name}` must hold class indices 0-{classes}. Received values {np.unique(labels)[:8]}")
    return labels.astype(np.uint8)


def _run_centres(region):
    """Marks the middle pixel of every vertical run of True in each column of `region`."""
    out = np.zeros_like(region)
    padded = np.pad(region, ((1, 1), (0, 0))).astype(np.int8)
    edges = np.diff(padded, axis=0)
    for col in np.flatnonzero(region.any(axis=0)):
        starts = np.flatnonzero(edges[:, col] == 1)
        ends = np.flatnonzero(edges[:, col] == -1)
        out[(starts + ends - 1) // 2, col] = True
    return out


def dense_to_sparse(dense, class_names=PHANTOM_CLASSES):
    """Thins every class region to a 1-pixel centre line across its thickness: horizontal bands to
    the middle row of each column's run, vertical ones to the middle column of each row's run
    (`ORIENTATIONS` of `class_names`, labels 1.. in order). Unlike a skeleton this adds no spurs at
    the band ends. Returns uint8 (H, W)."""
    orientation = orientations_of(class_names)
    dense = _check(dense, "dense", len(orientation))
    sparse = np.zeros_like(dense)
    for c, direction in orientation.items():
        region = dense == c
        if not region.any():
            continue
        line = _run_centres(region) if direction == "horizontal" else _run_centres(region.T).T
        sparse[line] = c
    return sparse


def sparse_to_dense(sparse, half_widths=None, class_names=PHANTOM_CLASSES):
    """Grows each class's line annotation across its thickness: horizontal lines vertically,
    vertical ones sideways, by `half_widths` {label: pixels} (default `DEFAULT_HALF_WIDTHS`, else
    2). Later labels overwrite earlier ones where they meet. Returns uint8 (H, W)."""
    orientation = orientations_of(class_names)
    sparse = _check(sparse, "sparse", len(orientation))
    half_widths = {**DEFAULT_HALF_WIDTHS, **(half_widths or {})}
    dense = np.zeros_like(sparse)
    for c, direction in orientation.items():
        line = sparse == c
        r = int(half_widths.get(c, 2))
        if not line.any() or r < 0:
            continue
        structure = np.ones((2 * r + 1, 1) if direction == "horizontal" else (1, 2 * r + 1), bool)
        dense[ndimage.binary_dilation(line, structure) if r else line] = c
    return dense


def convert_labels(labels, to, class_names=PHANTOM_CLASSES):
    """`to="sparse"` thins dense labels, `to="dense"` grows sparse ones."""
    if to == "sparse":
        return dense_to_sparse(labels, class_names)
    if to == "dense":
        return sparse_to_dense(labels, class_names=class_names)
    raise ValueError(f"`to` must be 'dense' or 'sparse'. Received: to={to!r}")


__all__ = ["DEFAULT_HALF_WIDTHS", "ORIENTATIONS", "PHANTOM_CLASSES", "convert_labels", "dense_to_sparse",
           "orientations_of", "sparse_to_dense"]
