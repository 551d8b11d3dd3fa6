"""training/calibrate.py: calibrators of pCTR and pCVR fitted on validation rows, judged on test
rows (features/calibration.py's fits themselves: tests/features/test_calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest

from features.calibration import Calibrator
from training.calibrate import fit_calibration


def funnel(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels from true probabilities; the reported heads over-confident distortions of them."""
    zc, zv = rng.normal(-2.5, 1.0, n), rng.normal(-1.0, 1.0, n)
    click = (rng.random(n) < 1 / (1 + np.exp(-zc))).astype(np.float64)
    conv = click * (rng.random(n) < 1 / (1 + np.exp(-zv)))
    pctr, pcvr = 1 / (1 + np.exp(-(1.8 * zc + 0.9))), 1 / (1 + np.exp(-(1.6 * zv - 0.5)))
    return click, conv, {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_is_fitted_on_validation_and_lowers_the_test_error(method):
    rng = np.random.default_rng(0)
    val, test = funnel(rng, 100_000), funnel(rng, 100_000)
    stored, report = fit_calibration(method, *val, *test)
    assert set(stored) == {"pctr", "pcvr"} and report["method"] == method
    before, after = report["test_ece_before"], report["test_ece_after"]
    for head in ("ctr", "cvr", "ctcvr"):
        assert after[head] < before[head] / 2, (head, before, after)
    # the stored calibrators are what the report measured: pCTCVR = pCTR' * pCVR'
    cal = {k: Calibrator.from_dict(v) for k, v in stored.items()}
    click, conv, pred = test
    pctcvr = cal["pctr"].apply(pred["pctr"]) * cal["pcvr"].apply(pred["pcvr"])
    observed = report["test_after"]["ctcvr_mean_pred"]
    assert observed == pytest.approx(float(pctcvr.mean()), rel=1e-9)
    assert report["test_after"]["ctcvr_observed"] == pytest.approx(float(conv.mean()))
