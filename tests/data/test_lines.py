"""Dense and sparse line labels of lung ultrasound (tlunet.data.lines)."""

import numpy as np
import pytest
from scipy import ndimage

from tlunet import evaluation as ev
from tlunet.data.lines import convert_labels, dense_to_sparse, sparse_to_dense
from tlunet.data.phantoms import lung_ultrasound


def _frames():
    """Frames whose B-line bands do not touch (touching bands are one region in dense labels, so
    no conversion can split them again - see the last test of this group)."""
    return [lung_ultrasound((128, 128), n_b_lines=b, pleural_irregularity=irr, seed=s)
            for s, (b, irr) in enumerate([(0, 0.0), (3, 0.8), (2, 0.3), (0, 0.5)])]


def test_dense_to_sparse_recovers_the_annotated_lines():
    for f in _frames():
        sparse = dense_to_sparse(f["dense"])
        for c in np.unique(f["sparse"])[1:]:
            truth = f["sparse"] == c
            # every traced line pixel lies within 1 px of the phantom's own line annotation
            near = ndimage.binary_dilation(truth, np.ones((3, 3)))
            assert (sparse == c).sum() > 0.5 * truth.sum()
            assert np.mean(near[sparse == c]) > 0.95, f"class {c}"


def test_sparse_to_dense_regrows_the_regions():
    for f in _frames():
        dense = sparse_to_dense(f["sparse"])
        for c in np.unique(f["dense"])[1:]:
            assert ev.dice(dense == c, f["dense"] == c) > 0.75, f"class {c}"
    # round trip dense -> sparse -> dense stays close to the original
    f = _frames()[1]
    back = convert_labels(convert_labels(f["dense"], "sparse"), "dense")
    assert ev.dice(back > 0, f["dense"] > 0) > 0.8


def test_touching_b_line_bands_become_one_line():
    dense = np.zeros((40, 40), np.uint8)
    dense[10:, 10:15] = 3
    dense[10:, 15:20] = 3  # two 5-px comet tails side by side
    sparse = dense_to_sparse(dense)
    assert np.unique(np.nonzero(sparse == 3)[1]).tolist() == [14]


def test_label_conversion_rejects_bad_input():
    with pytest.raises(ValueError, match="class indices 0-3"):
        dense_to_sparse(np.full((8, 8), 7))
    with pytest.raises(ValueError, match="2-D"):
        sparse_to_dense(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="`to`"):
        convert_labels(np.zeros((8, 8)), "thin")
