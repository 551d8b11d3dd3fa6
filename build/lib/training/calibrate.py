"""Post-hoc calibration of a trained model: pCTR and pCVR calibrators fitted on the validation
split (features/calibration.py's fits, stored with the model and applied in serving), and the
test split's expected calibration error before and after."""

from __future__ import annotations

import logging

import numpy as np

from features.calibration import FITS
from training.metrics import funnel_eces, funnel_metrics

log = logging.getLogger(__name__)


def fit_calibration(
    method: str,
    val_click: np.ndarray,
    val_conv: np.ndarray,
    val_pred: dict[str, np.ndarray],
    test_click: np.ndarray,
    test_conv: np.ndarray,
    test_pred: dict[str, np.ndarray],
) -> tuple[dict, dict]:
    """Calibrators of pCTR (on every validation impression) and pCVR (on clicked ones) in their
    stored form, and the test split's report (pCTCVR = pCTR' * pCVR')."""
    vc = np.asarray(val_click) > 0
    cal = {
        "pctr": FITS[method](val_pred["pctr"], np.asarray(val_click)),
        "pcvr": FITS[method](val_pred["pcvr"][vc], np.asarray(val_conv)[vc]),
    }
    after = {k: cal[k].apply(test_pred[k]) for k in ("pctr", "pcvr")}
    after["pctcvr"] = after["pctr"] * after["pcvr"]
    report = {
        "method": method,
        "test_ece_before": funnel_eces(test_click, test_conv, test_pred),
        "test_ece_after": funnel_eces(test_click, test_conv, after),
        "test_after": funnel_metrics(
            test_click, test_conv, after["pctr"], after["pcvr"], after["pctcvr"]
        ),
    }
    log.info(
        "calibration (%s): test ECE ctr %.4f -> %.4f, cvr %.4f -> %.4f, ctcvr %.4f -> %.4f",
        method,
        *(
            report[k][h]
            for h in ("ctr", "cvr", "ctcvr")
            for k in ("test_ece_before", "test_ece_after")
        ),
    )
    return {k: c.to_dict() for k, c in cal.items()}, report
