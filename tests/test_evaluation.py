"""Segmentation measures against medpy (an independent implementation) and brute force; the
boundary-voxel (`*_voxels`) distances are medpy's definition. The surface-element measures are
compared with DeepMind's surface-distance in test_evaluation_surface.py."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from tlunet import evaluation as ev

medpy = pytest.importorskip("medpy.metric.binary")


def _random_mask(rng, shape):
    noise = ndimage.gaussian_filter(rng.random(shape), 3 if len(shape) == 2 else 2)
    return noise > np.percentile(noise, rng.uniform(55, 85))


CASES = [((40, 50), (1.0, 1.0)), ((40, 50), (0.7, 1.3)), ((12, 20, 18), (2.5, 0.8, 0.9)),
         ((64, 33), (0.2, 0.2))]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape,spacing", CASES)
def test_against_medpy(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    a, b = _random_mask(rng, shape), _random_mask(rng, shape)
    assert ev.dice(a, b) == pytest.approx(medpy.dc(a, b))
    assert ev.iou(a, b) == pytest.approx(medpy.jc(a, b))
    assert ev.hausdorff_voxels(a, b, spacing) == pytest.approx(medpy.hd(a, b, spacing))
    assert ev.hd95_voxels(a, b, spacing) == pytest.approx(medpy.hd95(a, b, spacing))
    assert ev.assd_voxels(a, b, spacing) == pytest.approx(medpy.assd(a, b, spacing))


@pytest.mark.parametrize("seed", range(3))
def test_voxel_nsd_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_mask(rng, (30, 36)), _random_mask(rng, (30, 36))
    spacing = (0.5, 1.2)
    ba = np.argwhere(a & ~ndimage.binary_erosion(a)) * spacing
    bb = np.argwhere(b & ~ndimage.binary_erosion(b)) * spacing
    d = cdist(ba, bb)
    for tol in (0.5, 1.0, 2.5):
        expected = ((d.min(1) <= tol).sum() + (d.min(0) <= tol).sum()) / (len(ba) + len(bb))
        assert ev.normalized_surface_dice_voxels(a, b, tol, spacing) == pytest.approx(expected)
        assert ev.hausdorff_voxels(a, b, spacing) == pytest.approx(max(d.min(1).max(), d.min(0).max()))


def test_empty_mask_conventions():
    empty, full = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    full[2:5, 2:5] = True
    assert ev.dice(empty, empty) == 1.0 and ev.hausdorff(empty, empty) == 0.0
    assert ev.dice(empty, full) == 0.0 and ev.hausdorff(empty, full) == float("inf")
    assert ev.normalized_surface_dice(full, empty, 1.0) == 0.0
    assert ev.evaluate(full, full)["nsd"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="binary mask"):
        ev.dice(np.full((4, 4), 0.7), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shapes differ"):
        ev.iou(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        ev.hausdorff(np.ones((4, 4)), np.ones((4, 4)), spacing=(1, -1))


def test_classification_metrics_against_hand_counts():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .8, .1], [.1, .1, .8], [.5, .2, .3]])
    m = ev.classification_metrics(y, probs, ["covid", "pneumonia", "regular"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["pneumonia"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["regular"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["covid"]["f1"] == pytest.approx(0.5)
    # AUC of "covid": positives score .8,.3; negatives .2,.1,.1,.5 -> pairs won 4 + 3 of 8
    assert m["per_class"]["covid"]["auc"] == pytest.approx(7 / 8)
    perfect = ev.classification_metrics(y, np.eye(3)[y])
    assert perfect["macro_auc"] == 1.0 and perfect["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="labels"):
        ev.classification_metrics([0, 5], np.eye(3)[:2])
    # a class missing from the test labels is not counted as a failure in the macro means
    absent = ev.classification_metrics([0, 1, 1], np.eye(3)[[0, 1, 1]])
    assert np.isnan(absent["per_class"]["2"]["f1"]) and absent["macro_f1"] == 1.0
