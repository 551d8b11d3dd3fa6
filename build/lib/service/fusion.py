"""Fusion policies: pure functions from head probabilities (and price) to a ranking score. The
bounds on their parameters are request rules (service/request.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Policy = Literal["product", "sum"]


@dataclass(frozen=True)
class FusionParams:
    policy: Policy
    a: float
    b: float
    c: float

    @property
    def needs_price(self) -> bool:
        return self.c != 0


def score(
    p: FusionParams, pctr: np.ndarray, pcvr: np.ndarray, price: np.ndarray | None
) -> np.ndarray:
    """product: pctr^a * pcvr^b * price^c; sum: a*pctr + b*pcvr + c*price. Float64 out.

    A zero probability under a negative exponent would be infinite: probabilities are floored
    at 1e-12 for the product form."""
    pctr64, pcvr64 = pctr.astype(np.float64), pcvr.astype(np.float64)
    if p.policy == "product":
        out = np.power(np.maximum(pctr64, 1e-12), p.a) * np.power(np.maximum(pcvr64, 1e-12), p.b)
        if p.needs_price:
            out = out * np.power(np.maximum(price, 1e-12), p.c)
        return out
    out = p.a * pctr64 + p.b * pcvr64
    if p.needs_price:
        out = out + p.c * price
    return out
