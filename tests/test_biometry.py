"""Ellipse perimeter, head circumference and the HC18 measures."""

import math

import numpy as np
import pytest
from scipy import integrate

from tlunet.biometry import ellipse_perimeter, fit_ellipse, hc18_measures, head_circumference
from tlunet.data.phantoms import fetal_head


@pytest.mark.parametrize("a,b", [(10, 10), (30, 20), (100, 35)])
def test_ramanujan_perimeter_matches_the_integral(a, b):
    exact, _ = integrate.quad(lambda t: math.hypot(a * math.sin(t), b * math.cos(t)), 0, 2 * math.pi)
    assert ellipse_perimeter(a, b) == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_hc_of_a_filled_phantom_head(seed):
    head = fetal_head(seed=seed)
    assert head_circumference(head["mask"], head["pixel_size"]) == pytest.approx(head["hc_mm"], rel=0.003)


def test_hc18_measures_of_a_shrunken_prediction():
    head = fetal_head(seed=0)
    from scipy import ndimage
    pred = ndimage.binary_erosion(head["mask"], iterations=3).astype(np.uint8)
    m = hc18_measures(pred, head["mask"], head["pixel_size"])
    # Eroding by 3 px shortens the perimeter by about 2*pi*3 px.
    assert m["df"] == pytest.approx(-2 * math.pi * 3 * head["pixel_size"], rel=0.15)
    assert m["adf"] == pytest.approx(-m["df"])
    assert 0.9 < m["dice"] < 1.0
    assert m["hausdorff"] == pytest.approx(3 * head["pixel_size"], rel=0.2)


def test_no_ellipse_gives_nan():
    assert math.isnan(head_circumference(np.zeros((10, 10)), 0.1))
    assert fit_ellipse(np.zeros((3, 2))) is None


def test_holes_in_a_predicted_head_do_not_pull_the_ellipse_inwards():
    """A ragged prediction with holes inside the skull: only the outer edge is fitted."""
    from skimage import draw
    mask = np.zeros((300, 400), np.uint8)
    rr, cc = draw.ellipse(150, 200, 100, 140, shape=mask.shape)
    mask[rr, cc] = 1
    solid = head_circumference(mask, 0.2)
    holed = mask.copy()
    for r, c in ((120, 160), (170, 240), (150, 200)):
        rr, cc = draw.disk((r, c), 25, shape=mask.shape)
        holed[rr, cc] = 0
    assert head_circumference(holed, 0.2) == pytest.approx(solid, abs=1e-9)
