"""Post-hoc calibration (features/calibration.py): fits that really lower the error, and the
stored form refused when it is not a calibrator."""

from __future__ import annotations

import numpy as np
import pytest

from features.calibration import Calibrator, expected_calibration_error, fit_isotonic, fit_platt
from training.metrics import auc


@pytest.fixture(scope="module")
def biased():
    """Labels drawn from true p; the model reports a distorted, over-confident p."""
    rng = np.random.default_rng(0)
    z = rng.normal(-2.5, 1.0, 200_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(np.float64)
    reported = 1 / (1 + np.exp(-(1.8 * z + 0.9)))
    return reported, y


@pytest.mark.parametrize("fit", [fit_platt, fit_isotonic])
def test_calibration_lowers_the_expected_calibration_error(biased, fit):
    p, y = biased
    half = len(p) // 2  # fit on one half, measure on the other
    cal = fit(p[:half], y[:half])
    before = expected_calibration_error(y[half:], p[half:])
    after = expected_calibration_error(y[half:], cal.apply(p[half:]))
    assert before > 0.02 and after < before / 4, (before, after)
    assert auc(y[half:], cal.apply(p[half:])) == pytest.approx(auc(y[half:], p[half:]), abs=2e-3)
    again = Calibrator.from_dict(cal.to_dict())  # the stored form reproduces it exactly
    assert np.array_equal(again.apply(p[:100]), cal.apply(p[:100]))


def test_platt_recovers_a_known_distortion(biased):
    p, y = biased
    cal = fit_platt(p, y)
    assert cal.params["a"] == pytest.approx(1 / 1.8, rel=0.05)
    assert cal.params["b"] == pytest.approx(-0.9 / 1.8, abs=0.05)


@pytest.mark.parametrize(
    "stored",
    [
        {"method": "magic"},
        {"method": "platt", "a": 1.0},
        {"method": "isotonic", "x": [0.1, 0.2], "y": [0.5]},
        {"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2]},
        {"method": "isotonic", "x": [0.1, 0.2], "y": [0.3, 0.1]},
        {"method": "isotonic", "x": [0.1, 0.2], "y": [0.1, 1.5]},
    ],
)
def test_a_malformed_stored_calibrator_is_refused(stored):
    with pytest.raises((ValueError, KeyError)):
        Calibrator.from_dict(stored)


def test_ece_of_a_perfect_predictor_is_small():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.3, 100_000)
    y = rng.random(p.size) < p
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.full_like(p, 0.5)) > 0.3
