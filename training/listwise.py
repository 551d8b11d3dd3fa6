"""Metrics per request: how well a list the service would rank serves the shop, computed for
every request of a split at once (numpy only, no loop over requests).

A request is the candidates ranked together (the spec's request key). Each metric is taken per
request and then averaged, because a ranking is only ever compared within its own list: a whole-
set AUC rewards a model for telling a busy user's list from a quiet one's, which no ranking does.

- `ndcg_at`: NDCG@k with any gain; with price x conversion as gain (GMV-weighted) it asks "are
  the items that earned money near the top". Requests with no gain have no ideal order and are
  left out (their count is returned).
- `gain_at`: the gain of the top k, per request, averaged over every request (revenue at k with
  price x conversion).
- `auc_within`: the AUC of a score against a 0/1 label inside each request that has both classes,
  averaged with each request weighted by its rows (the usual "group AUC"); ties count a half.

Ties in a score keep the rows' order, as the service keeps a request's order (response.py).
"""

from __future__ import annotations

import numpy as np


class Requests:
    """The rows of a split grouped by request: `index` (rows,) is each row's request, 0..n-1."""

    def __init__(self, request_ids: np.ndarray):
        _, index = np.unique(np.asarray(request_ids), return_inverse=True)
        self.index = index.reshape(-1).astype(np.int64)
        self.size = np.bincount(self.index)
        self.n = len(self.size)
        self.start = np.concatenate([[0], np.cumsum(self.size)[:-1]])  # in index-sorted order

    def _sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.index, weights=values, minlength=self.n)

    def positions(self, score: np.ndarray) -> np.ndarray:
        """Each row's 0-based place in its request's list, best (highest score) first."""
        order = np.lexsort((-np.asarray(score, np.float64), self.index))  # stable: ties by row
        pos = np.empty(len(order), np.int64)
        pos[order] = np.arange(len(order)) - self.start[self.index[order]]
        return pos

    def _dcg_at(self, k: int, pos: np.ndarray, gain: np.ndarray) -> np.ndarray:
        return self._sum(np.where(pos < k, gain / np.log2(pos + 2.0), 0.0))

    def ndcg_at(self, k: int, score: np.ndarray, gain: np.ndarray) -> tuple[float, int]:
        """(mean NDCG@k over the requests with some gain, how many those are)."""
        gain = np.asarray(gain, np.float64)
        ideal = self._dcg_at(k, self.positions(gain), gain)
        has = ideal > 0
        if not has.any():
            return float("nan"), 0
        dcg = self._dcg_at(k, self.positions(score), gain)
        return float(np.mean(dcg[has] / ideal[has])), int(has.sum())

    def gain_at(self, k: int, score: np.ndarray, gain: np.ndarray) -> float:
        """The summed gain of each request's top k, averaged over every request."""
        top = self.positions(score) < k
        return float(np.mean(self._sum(np.where(top, np.asarray(gain, np.float64), 0.0))))

    def auc_within(self, labels: np.ndarray, score: np.ndarray) -> tuple[float, int]:
        """(the rows-weighted mean of each request's AUC, how many requests have both classes);
        ties within a request count a half (average ranks)."""
        y = np.asarray(labels).astype(np.float64)
        s = np.asarray(score, np.float64)
        order = np.lexsort((s, self.index))
        g, v = self.index[order], s[order]
        # runs of one request and one score share their average rank
        new = np.r_[True, (v[1:] != v[:-1]) | (g[1:] != g[:-1])]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], len(v)]
        rank = np.repeat((starts + ends + 1) / 2.0, ends - starts) - self.start[g]  # 1-based
        pos = np.bincount(g, weights=y[order], minlength=self.n)
        neg = self.size - pos
        rank_sum = np.bincount(g, weights=rank * y[order], minlength=self.n)
        both = (pos > 0) & (neg > 0)
        if not both.any():
            return float("nan"), 0
        auc = (rank_sum[both] - pos[both] * (pos[both] + 1) / 2) / (pos[both] * neg[both])
        return float(np.average(auc, weights=self.size[both])), int(both.sum())
