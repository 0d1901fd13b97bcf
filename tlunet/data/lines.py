"""Dense and sparse labels of lung-ultrasound lines (Gare et al. 2022), and the conversion between them.

Classes follow `tlunet.data.phantoms.LUNG_US_CLASSES`: 0 background, 1 pleural line, 2 A-line,
3 B-line. *Dense* labels paint each line as the region it occupies (a band a few pixels thick for
the pleural line and A-lines, the comet tail's full width for a B-line); *sparse* labels trace
each line with a 1-pixel curve, as an annotator clicking along it would.
"""

import numpy as np
from scipy import ndimage

# Half-widths (pixels) used to grow sparse lines back into regions, per class; B-lines last so
# they overwrite the A-lines they cross (B-lines erase A-lines in the image too).
DEFAULT_HALF_WIDTHS = {1: 2, 2: 2, 3: 4}
# direction along which each class extends: pleural line and A-lines are horizontal, B-lines vertical
_ORIENTATION = {1: "horizontal", 2: "horizontal", 3: "vertical"}


def _check(labels, name):
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D label image (H, W). Received: shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 3 or not np.all(np.mod(labels, 1) == 0)):
        raise ValueError(f"`{name}` must hold class indices 0-3 (background, pleural, A-line, B-line). "
                         f"Received values {np.unique(labels)[:8]}")
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


def dense_to_sparse(dense):
    """Thins every class region to a 1-pixel centre line across its thickness: the pleural line
    and A-lines (horizontal bands) to the middle row of each column's run, B-lines (vertical
    comet tails) to the middle column of each row's run. Unlike a skeleton this adds no spurs at
    the band ends. Returns uint8 (H, W)."""
    dense = _check(dense, "dense")
    sparse = np.zeros_like(dense)
    for c in (1, 2, 3):
        region = dense == c
        if not region.any():
            continue
        line = _run_centres(region) if _ORIENTATION[c] == "horizontal" else _run_centres(region.T).T
        sparse[line] = c
    return sparse


def sparse_to_dense(sparse, half_widths=None):
    """Grows each class's line annotation across its thickness: pleural line and A-lines
    vertically (they are horizontal bands), B-lines sideways. Returns uint8 (H, W)."""
    sparse = _check(sparse, "sparse")
    half_widths = {**DEFAULT_HALF_WIDTHS, **(half_widths or {})}
    dense = np.zeros_like(sparse)
    for c in (1, 2, 3):
        line = sparse == c
        r = int(half_widths[c])
        if not line.any() or r < 0:
            continue
        structure = np.ones((2 * r + 1, 1) if _ORIENTATION[c] == "horizontal" else (1, 2 * r + 1), bool)
        dense[ndimage.binary_dilation(line, structure) if r else line] = c
    return dense


def convert_labels(labels, to):
    """`to="sparse"` thins dense labels, `to="dense"` grows sparse ones."""
    if to == "sparse":
        return dense_to_sparse(labels)
    if to == "dense":
        return sparse_to_dense(labels)
    raise ValueError(f"`to` must be 'dense' or 'sparse'. Received: to={to!r}")


__all__ = ["DEFAULT_HALF_WIDTHS", "convert_labels", "dense_to_sparse", "sparse_to_dense"]
