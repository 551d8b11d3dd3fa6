"""Metrics per request (training/listwise.py), against a loop over requests written the plain
way: every request's list sorted, its DCG and ideal DCG summed, its AUC by training.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.listwise import Requests
from training.metrics import auc


def by_loop(lists, score, labels, gain, k):
    ndcg, revenue, aucs, weights = [], [], [], []
    for r in np.unique(lists):
        rows = np.flatnonzero(lists == r)
        top = rows[np.argsort(-score[rows], kind="stable")][:k]
        dcg = sum(gain[i] / math.log2(p + 2) for p, i in enumerate(top))
        best = np.sort(gain[rows])[::-1][:k]
        ideal = sum(g / math.log2(p + 2) for p, g in enumerate(best))
        if ideal > 0:
            ndcg.append(dcg / ideal)
        revenue.append(gain[top].sum())
        a = auc(labels[rows], score[rows])
        if not np.isnan(a):
            aucs.append(a)
            weights.append(len(rows))
    return np.mean(ndcg), len(ndcg), np.mean(revenue), np.average(aucs, weights=weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_per_request_equal_a_loop_over_requests(seed):
    rng = np.random.default_rng(seed)
    n = 4000
    lists = rng.choice(np.array(["p", "q", "r", "s", "t", "u"] * 50), n) + rng.integers(
        0, 40, n
    ).astype(str)  # text request ids, unsorted, lists of uneven length
    score = rng.random(n).round(2)  # many ties: they keep the rows' order, and count a half
    labels = (rng.random(n) < 0.15).astype(int)
    gain = rng.uniform(1, 100, n) * labels
    want = by_loop(lists, score, labels, gain, 10)
    req = Requests(lists)
    ndcg, bought = req.ndcg_at(10, score, gain)
    assert ndcg == pytest.approx(want[0], rel=1e-12) and bought == want[1]
    assert req.gain_at(10, score, gain) == pytest.approx(want[2], rel=1e-12)
    assert req.auc_within(labels, score)[0] == pytest.approx(want[3], rel=1e-12)


def test_ties_keep_the_rows_order_and_lists_without_a_class_are_left_out():
    req = Requests(np.array([7, 7, 7, 3, 3]))
    score = np.array([0.5, 0.5, 0.9, 0.2, 0.2])
    assert req.positions(score).tolist() == [1, 2, 0, 0, 1]
    # list 3 has no positive: no AUC, no ideal order; list 7's AUC: the positive ties a negative
    labels = np.array([1, 0, 0, 0, 0])
    assert req.auc_within(labels, score) == (0.25, 1)
    assert req.ndcg_at(1, score, labels * 2.0) == (0.0, 1)  # row 2 is first, and earned nothing
    assert req.gain_at(1, score, labels * 2.0) == 0.0  # list 7's top is row 2: (0 + 0) / 2
    assert req.gain_at(2, score, labels * 2.0) == 1.0  # row 0 is its second: (2 + 0) / 2
    nothing = np.zeros(5)
    assert math.isnan(req.ndcg_at(3, score, nothing)[0]) and req.ndcg_at(3, score, nothing)[1] == 0
    assert math.isnan(req.auc_within(nothing, score)[0])
