"""Post-hoc calibration of a probability head: fitted by training on the validation split, stored
in the manifest, applied by the service after the graphs run. numpy only, like the contract:
both sides import this one definition, so serving applies exactly what training measured.

- platt:    p' = sigmoid(a * logit(p) + b), two numbers fitted by Newton's method on log loss;
            monotone, so AUC is unchanged.
- isotonic: the pool-adjacent-violators fit of the label on p (on up to 10,000 quantile bins of
            p, then interpolated linearly between the fitted points); non-decreasing, so AUC can
            only change by ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-7
MAX_BINS = 10_000


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibrator:
    method: str  # "platt" or "isotonic"
    params: dict = field(default_factory=dict)

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p)
        if self.method == "platt":
            z = self.params["a"] * _logit(p) + self.params["b"]
            out = 1.0 / (1.0 + np.exp(-z))
        elif self.method == "isotonic":
            out = np.interp(p, self.params["x"], self.params["y"])
        else:
            raise ValueError(f"unknown calibration method {self.method!r}")
        return out.astype(p.dtype if p.dtype.kind == "f" else np.float32)

    def to_dict(self) -> dict:
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, d: dict) -> Calibrator:
        d = dict(d)
        method = d.pop("method")
        if method == "platt":
            params = {"a": float(d["a"]), "b": float(d["b"])}
        elif method == "isotonic":
            x, y = np.asarray(d["x"], np.float64), np.asarray(d["y"], np.float64)
            if x.ndim != 1 or x.shape != y.shape or x.size < 1 or np.any(np.diff(x) < 0):
                raise ValueError("isotonic calibration needs sorted x and y of one length")
            if np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic calibration values must be non-decreasing in [0, 1]")
            params = {"x": x.tolist(), "y": y.tolist()}
        else:
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, params)


def fit_platt(p: np.ndarray, y: np.ndarray, iterations: int = 50) -> Calibrator:
    z, y = _logit(p), np.asarray(y, np.float64)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        q = 1.0 / (1.0 + np.exp(-(a * z + b)))
        g = np.array([np.dot(q - y, z), np.sum(q - y)])
        w = q * (1 - q)
        h = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), np.sum(w)]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return Calibrator("platt", {"a": float(a), "b": float(b)})


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> Calibrator:
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    order = np.argsort(p, kind="stable")
    p, y = p[order], y[order]
    # quantile bins first: PAV over at most MAX_BINS weighted points
    edges = np.unique(np.linspace(0, len(p), min(MAX_BINS, len(p)) + 1).astype(np.int64))
    counts = np.diff(edges).astype(np.float64)
    xs = np.add.reduceat(p, edges[:-1]) / counts
    ys = np.add.reduceat(y, edges[:-1]) / counts
    # pool adjacent violators: blocks of (mean x, mean y, weight) with non-decreasing y
    bx, by, bw = [], [], []
    for xi, yi, wi in zip(xs.tolist(), ys.tolist(), counts.tolist(), strict=True):
        bx.append(xi * wi)
        by.append(yi * wi)
        bw.append(wi)
        while len(by) > 1 and by[-2] / bw[-2] > by[-1] / bw[-1]:
            w, sy, sx = bw.pop(), by.pop(), bx.pop()
            bw[-1] += w
            by[-1] += sy
            bx[-1] += sx
    x = np.array(bx) / np.array(bw)
    v = np.clip(np.array(by) / np.array(bw), 0.0, 1.0)
    return Calibrator("isotonic", {"x": x.tolist(), "y": v.tolist()})


FITS = {"platt": fit_platt, "isotonic": fit_isotonic}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 20) -> float:
    """|mean label - mean p| averaged over `bins` equal-mass bins of p, weighted by size.
    Equal-mass, not equal-width: with a 5% CTR almost every prediction falls in the first
    equal-width bin, which would hide the miscalibration this is meant to show."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, len(p))):
        total += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(total / len(p))
