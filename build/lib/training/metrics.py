"""Whole-set metrics: AUC over every row at once (never averaged per batch), log loss, ECE, and
the oracle's figures on generated data. numpy only: importing it loads no torch."""

from __future__ import annotations

import numpy as np

from features.calibration import expected_calibration_error

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties given their average rank.
    NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average rank of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of the run
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def soft_auc(target: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC against probabilistic labels: row i counts as a positive with weight target[i]
    and as a negative with weight 1 - target[i] (pairs of a row with itself left out, ties half).
    With the generator's true P(conversion | click) as target this is the expected AUC of pCVR
    over every impression had each been clicked: the entire space a ranker scores."""
    q = np.asarray(target, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    s, q = s[order], q[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(q, starts) if len(q) else q
    neg = np.add.reduceat(1.0 - q, starts) if len(q) else q
    below = np.cumsum(neg) - neg  # negative weight strictly below each run of equal scores
    self_pairs = float(np.dot(q, 1.0 - q))
    wins = float(np.dot(pos, below) + 0.5 * (np.dot(pos, neg) - self_pairs))
    pairs = float(q.sum() * (1.0 - q).sum() - self_pairs)
    return wins / pairs if pairs > 0 else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def head_metrics(name: str, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        f"{name}_auc": auc(labels, probs),
        f"{name}_logloss": log_loss(labels, probs),
        f"{name}_mean_pred": float(np.mean(probs)) if len(probs) else float("nan"),
        f"{name}_observed": float(np.mean(labels)) if len(labels) else float("nan"),
    }


def funnel_metrics(
    click: np.ndarray, conv: np.ndarray, pctr: np.ndarray, pcvr: np.ndarray, pctcvr: np.ndarray
) -> dict[str, float]:
    """CTR and CTCVR on every impression, CVR on clicked impressions only (as the paper)."""
    clicked = np.asarray(click) > 0
    return {
        **head_metrics("ctr", click, pctr),
        **head_metrics("cvr", np.asarray(conv)[clicked], np.asarray(pcvr)[clicked]),
        **head_metrics("ctcvr", conv, pctcvr),
    }


def funnel_eces(click: np.ndarray, conv: np.ndarray, pred: dict[str, np.ndarray]) -> dict:
    """Expected calibration error of each head, pCVR on clicked impressions only."""
    clicked = np.asarray(click) > 0
    return {
        "ctr": expected_calibration_error(click, pred["pctr"]),
        "cvr": expected_calibration_error(np.asarray(conv)[clicked], pred["pcvr"][clicked]),
        "ctcvr": expected_calibration_error(conv, pred["pctcvr"]),
    }


def truth_predictions(truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The generator's true probabilities (truth_{split}.csv) as a model's three heads."""
    pc, pv = truth["p_click"], truth["p_conversion"]
    return {"pctr": pc, "pcvr": pv, "pctcvr": pc * pv}


def oracle_metrics(
    truth: dict[str, np.ndarray], click: np.ndarray, conv: np.ndarray
) -> dict[str, float]:
    """The AUCs of the true probabilities: the ceiling of every model's."""
    p = truth_predictions(truth)
    m = funnel_metrics(click, conv, p["pctr"], p["pcvr"], p["pctcvr"])
    return {
        **{k: v for k, v in m.items() if k.endswith("_auc")},
        "cvr_auc_entire": soft_auc(p["pcvr"], p["pcvr"]),
    }
