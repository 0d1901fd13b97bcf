"""Surface measures by surface elements, against DeepMind's `surface-distance` (the reference
definition, `pip install surface-distance==0.1`, in the dev extra) and hand-computed cases.

tlunet builds its 3D surface-element table from scikit-image's marching cubes and its 2D table from
the marching-squares cases, so these tests compare two independent derivations (the package holds a
hard-coded table of triangle normals). The package's empty-mask paths use `np.Inf`, gone in NumPy 2,
so it is only called on non-empty masks here; tlunet's own empty-mask conventions are tested directly.
"""

import numpy as np
import pytest
from scipy import ndimage

from tlunet import evaluation as ev


def _blobs(rng, shape):
    """A few random blobs, some touching the array border."""
    noise = ndimage.gaussian_filter(rng.random(shape), 1.5 if len(shape) == 3 else 2.5)
    return noise > np.percentile(noise, rng.uniform(60, 85))


def _case(seed):
    rng = np.random.default_rng(seed)
    ndim = 2 + seed % 2
    shape = tuple(int(n) for n in rng.integers(8, 36 if ndim == 2 else 18, size=ndim))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, size=ndim))   # anisotropic
    return _blobs(rng, shape), _blobs(rng, shape), spacing


@pytest.fixture(scope="module")
def sd():
    return pytest.importorskip("surface_distance")


@pytest.mark.parametrize("seed", range(12))
def test_against_deepmind_surface_distance(sd, seed):
    pred, true, spacing = _case(seed)
    ref = sd.compute_surface_distances(true, pred, spacing)       # (mask_gt, mask_pred)
    d = ev.surface_distances(pred, true, spacing)
    np.testing.assert_allclose(d.pred_to_true, ref["distances_pred_to_gt"], rtol=1e-9)
    np.testing.assert_allclose(d.true_to_pred, ref["distances_gt_to_pred"], rtol=1e-9)
    np.testing.assert_allclose(d.pred_areas, ref["surfel_areas_pred"], rtol=1e-9)
    np.testing.assert_allclose(d.true_areas, ref["surfel_areas_gt"], rtol=1e-9)
    for tol in (0.0, 0.5, 1.0, 2.5):
        assert ev.normalized_surface_dice(pred, true, tol, spacing) == pytest.approx(
            sd.compute_surface_dice_at_tolerance(ref, tol), rel=1e-6)
    assert ev.hausdorff(pred, true, spacing) == pytest.approx(sd.compute_robust_hausdorff(ref, 100), rel=1e-6)
    assert ev.hd95(pred, true, spacing) == pytest.approx(sd.compute_robust_hausdorff(ref, 95), rel=1e-6)
    # ASSD: the package's two directed means, weighted by the surfaces' areas
    (gt_to_pred, pred_to_gt), a_gt, a_pred = (sd.compute_average_surface_distance(ref),
                                              ref["surfel_areas_gt"].sum(), ref["surfel_areas_pred"].sum())
    assert ev.assd(pred, true, spacing) == pytest.approx(
        (gt_to_pred * a_gt + pred_to_gt * a_pred) / (a_gt + a_pred), rel=1e-6)
    assert ev.evaluate(pred, true, spacing, tolerance=1.0)["nsd"] == pytest.approx(
        sd.compute_surface_dice_at_tolerance(ref, 1.0), rel=1e-6)


def _bit_reversed(code, bits):
    return int(format(code, f"0{bits}b")[::-1], 2)


@pytest.mark.parametrize("seed", range(3))
def test_surfel_tables_match_the_reference_tables(sd, seed):
    from surface_distance import lookup_tables
    spacing = tuple(np.random.default_rng(seed).uniform(0.2, 3.0, 3))
    # tlunet's code sets bit k for neighbour offset k (row-major from the origin); the package's
    # kernels set bit 2^ndim - 1 - k, a point reflection, under which the areas are unchanged.
    ref3 = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    ref2 = lookup_tables.create_table_neighbour_code_to_contour_length(spacing[:2])
    mine3, mine2 = ev._surfel_table(spacing), ev._surfel_table(spacing[:2])
    np.testing.assert_allclose(mine3, [ref3[_bit_reversed(c, 8)] for c in range(256)], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mine2, [ref2[_bit_reversed(c, 4)] for c in range(16)], rtol=1e-12, atol=1e-12)


def test_single_voxel_surface():
    # 2D: a diamond of four half-diagonals; 3D: eight corner triangles.
    s2, s3 = (0.5, 2.0), (0.5, 2.0, 1.5)
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    d = ev.surface_distances(one, one, s2)
    assert d.pred_areas.sum() == pytest.approx(2 * np.hypot(*s2))
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    d = ev.surface_distances(one, one, s3)
    triangle = 0.125 * np.linalg.norm([s3[1] * s3[2], s3[0] * s3[2], s3[0] * s3[1]])
    assert d.pred_areas.sum() == pytest.approx(8 * triangle)
    assert ev.normalized_surface_dice(one, one, 0.0, s3) == 1.0 and ev.hausdorff(one, one, s3) == 0.0


@pytest.mark.parametrize("s0,s1", [(1.0, 2.0), (0.5, 0.8)])
def test_two_squares_one_voxel_apart(s0, s1):
    """4x4 squares, the second one voxel further along axis 0. Each contour has 4 corner cuts (half a
    voxel diagonal each), 3 + 3 segments across axis 0 (length s1) and 3 + 3 along it (length s0).
    The side segments and the two corners on the far side coincide with the other contour (distance
    0); the rest lies one voxel (s0) away (for s0 <= s1)."""
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[2:6, 3:7], b[3:7, 3:7] = True, True
    diag = 0.5 * np.hypot(s0, s1)
    total, touching = 4 * diag + 6 * s0 + 6 * s1, 2 * diag + 6 * s0
    spacing = (s0, s1)
    assert ev.normalized_surface_dice(a, b, 0.9 * s0, spacing) == pytest.approx(touching / total)
    assert ev.normalized_surface_dice(a, b, s0, spacing) == 1.0
    assert ev.hausdorff(a, b, spacing) == pytest.approx(s0)
    assert ev.hd95(a, b, spacing) == pytest.approx(s0)
    assert ev.assd(a, b, spacing) == pytest.approx(s0 * (total - touching) / total)
    # the former boundary-voxel count: 6 of the 12 boundary voxels of each square coincide
    assert ev.normalized_surface_dice_voxels(a, b, 0.9 * s0, spacing) == pytest.approx(0.5)


def test_empty_masks_and_dimensions():
    empty, full = np.zeros((6, 7, 5), bool), np.zeros((6, 7, 5), bool)
    full[2:4, 1:5, 1:3] = True
    assert ev.normalized_surface_dice(empty, empty, 1.0) == 1.0 and ev.hd95(empty, empty) == 0.0
    assert ev.normalized_surface_dice(full, empty, 1.0) == 0.0 and ev.assd(empty, full) == float("inf")
    assert ev.surface_distances(full, empty) is None
    m = ev.evaluate(full, full, spacing=(2.0, 1.0, 0.5))
    assert m["nsd"] == 1.0 and m["hausdorff"] == m["hd95"] == m["assd"] == 0.0
    with pytest.raises(ValueError, match="2D and 3D"):
        ev.hausdorff(np.ones(5), np.ones(5))
    assert ev.hausdorff_voxels(np.r_[1, 1, 0, 0], np.r_[0, 1, 1, 0]) == 1.0   # any dimension
