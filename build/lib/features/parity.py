"""The one definition of "the same scores", shared by export (ONNX vs PyTorch) and the service's
warm-up (this ONNX Runtime vs the sample scores stored with the model).

|got - ref| <= ATOL + rtol * |ref|, element-wise, with rtol 0 for every kind but DIVISION.
1e-5 absolute holds for products of sigmoids (about 1e-7 is measured). DIVISION's
pCVR = pCTCVR / pCTR is ill-conditioned: its CTCVR net's logit sits near -8, where two GEMM
implementations summing in different orders differ by about 3e-4, and the ratio turns that into
2e-5 on a pCVR of 0.05. So DIVISION alone gets a relative term; export records the tolerance it
verified in the manifest, and warm-up uses that one.
"""

from __future__ import annotations

import numpy as np

ATOL = 1e-5
RTOL_BY_KIND = {"division": 1e-3}


def tolerance(kind: str) -> dict[str, float]:
    return {"atol": ATOL, "rtol": RTOL_BY_KIND.get(kind, 0.0)}


def close(got: np.ndarray, ref: np.ndarray, atol: float = ATOL, rtol: float = 0.0) -> bool:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return bool(np.all(np.abs(got - ref) <= atol + rtol * np.abs(ref)))
