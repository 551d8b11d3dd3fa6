"""Whole-set metrics against definitions computed the slow way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.metrics import auc, soft_auc


def _pairs_auc(q: np.ndarray, s: np.ndarray) -> float:
    """Every ordered pair of distinct rows, i positive with weight q[i], j negative with 1-q[j]."""
    wins = total = 0.0
    for i, j in itertools.permutations(range(len(q)), 2):
        w = q[i] * (1 - q[j])
        total += w
        wins += w * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))
    return wins / total


def test_soft_auc_with_hard_labels_is_the_auc():
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.2
    s = rng.random(2000).round(2)  # ties
    assert soft_auc(y.astype(float), s) == pytest.approx(auc(y, s), abs=1e-12)


def test_soft_auc_is_the_pairwise_definition():
    rng = np.random.default_rng(1)
    q, s = rng.random(80), rng.integers(0, 12, 80).astype(float)
    assert soft_auc(q, s) == pytest.approx(_pairs_auc(q, s), abs=1e-12)


def test_soft_auc_rewards_ranking_by_the_true_probability():
    rng = np.random.default_rng(2)
    q = rng.beta(1, 8, 5000)
    best = soft_auc(q, q)
    assert 0.5 < soft_auc(q, q + rng.normal(0, 0.05, 5000)) < best
    assert soft_auc(q, -q) == pytest.approx(1 - best)
    assert soft_auc(q, np.zeros(5000)) == pytest.approx(0.5)
