"""A spec feature's raw values -> the contract's raw form, the same code offline and online.

Raw ids. The contract hashes int64 raw ids (features/contract.py); a spec's id and ids features
hold integers or text (`Field.dtype`, fixed when training read the table):
- an integer is its own raw id, its sign bit cleared (`v & INT64_MAX`: a negative id and the
  id 2^63 above it share a row; no table has both);
- a text is the first 8 bytes of its BLAKE2b digest, sign bit cleared: stable across processes
  and machines (Python's `hash` is salted per process), and a table of a million distinct texts
  expects no collision (birthday bound 2^-24).
Hashing, not a fitted vocabulary: the contract stays a handful of numbers per feature, an id
unseen in training needs no special case (with `min_count` it reads the table's shared row, as
a vocabulary's out-of-vocabulary row would), and a new item's id needs no refit.

Crosses. `count_in` computes a cross feature for many rows at once: the weight (summed, a
weight of 1 per occurrence where the list has no weights) of each row's item key values in its
user's list, as the model sees that list (truncated to its columns). Training calls it on a
split's arrays and the service on one user and a request's candidates: one function, so an
impression scores the same offline and online.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from features.bounds import INT64_MAX  # (re-exported: the sign-bit mask)


def text_id(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & INT64_MAX


def text_ids(texts: Sequence[str]) -> np.ndarray:
    """text_id of each, as int64 (callers pass distinct texts: a column's dictionary)."""
    return np.fromiter((text_id(t) for t in texts), dtype=np.int64, count=len(texts))


def int_ids(values: np.ndarray) -> np.ndarray:
    return (np.asarray(values, dtype=np.int64) & INT64_MAX).astype(np.int64)


def _listed(uniq: np.ndarray, key_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, position in `uniq`) of each key id (N, K) that `uniq` (sorted) holds, in row-major
    order; padding (-1) and ids no list holds find nothing."""
    kr, kc = np.nonzero(key_ids >= 0)
    if not len(kr) or not len(uniq):
        return kr[:0], kr[:0]
    keys = key_ids[kr, kc]
    at = np.minimum(np.searchsorted(uniq, keys), len(uniq) - 1)
    hit = uniq[at] == keys
    return kr[hit], at[hit]


class ListCounts:
    """Users' lists indexed for `count`: dense codes of their ids and, per (user, code), the
    summed weight, sorted. Built once per list and reused for every cross counting in it
    (training counts both splits' impressions against one users table)."""

    def __init__(self, list_ids: np.ndarray, list_weights: np.ndarray):
        list_ids = np.asarray(list_ids, dtype=np.int64)
        lu, lc = np.nonzero(list_ids >= 0)
        self.uniq, code = np.unique(list_ids[lu, lc], return_inverse=True)
        self.width = np.int64(len(self.uniq))
        pairs = lu.astype(np.int64) * self.width + code.reshape(-1)
        self.pair, inverse = np.unique(pairs, return_inverse=True)
        weights = np.asarray(list_weights, np.float64)[lu, lc]
        self.summed = np.bincount(inverse.reshape(-1), weights, minlength=len(self.pair))

    def count(self, row_user: np.ndarray, key_ids: np.ndarray) -> np.ndarray:
        """(N,) float32: for row n, the summed weight in user row_user[n]'s list of each of
        row n's key ids (N, K) (-1 = padding); 0 where none is there."""
        key_ids = np.asarray(key_ids, dtype=np.int64)
        n = len(key_ids)
        kr, at = _listed(self.uniq, key_ids)
        if not len(kr) or not len(self.pair):
            return np.zeros(n, dtype=np.float32)
        wanted = np.asarray(row_user, dtype=np.int64)[kr] * self.width + at
        pos = np.minimum(np.searchsorted(self.pair, wanted), len(self.pair) - 1)
        hit = self.pair[pos] == wanted
        return np.bincount(kr[hit], self.summed[pos[hit]], minlength=n).astype(np.float32)


class OneList:
    """One user's list indexed for `count`: its distinct ids, sorted, and each one's summed
    weight. What ListCounts does for many users, for the one user a request serves: one sort of
    the list instead of two, and the same sums, in the same order (so the same float32 counts
    as training's)."""

    def __init__(self, list_ids: np.ndarray, list_weights: np.ndarray):
        list_ids = np.asarray(list_ids, dtype=np.int64).reshape(-1)
        keep = list_ids >= 0
        self.uniq, code = np.unique(list_ids[keep], return_inverse=True)
        weights = np.asarray(list_weights, np.float64).reshape(-1)[keep]
        self.summed = np.bincount(code.reshape(-1), weights, minlength=len(self.uniq))

    def count(self, key_ids: np.ndarray) -> np.ndarray:
        """(N,) float32: the summed weight in the list of each of row n's key ids (N, K)."""
        key_ids = np.asarray(key_ids, dtype=np.int64)
        kr, at = _listed(self.uniq, key_ids)
        return np.bincount(kr, self.summed[at], minlength=len(key_ids)).astype(np.float32)


def count_in(
    list_ids: np.ndarray,
    list_weights: np.ndarray,
    row_user: np.ndarray,
    key_ids: np.ndarray,
) -> np.ndarray:
    """(N,) float32: for row n, the summed weight in user row_user[n]'s list of each of row n's
    key ids (0 where none is there).

    list_ids, list_weights: (U, L) raw ids (-1 = padding) and weights of the users' lists;
    key_ids: (N, K) raw ids of each row's item values (-1 = padding). Exact and vectorised
    (ListCounts): the lists' ids become dense codes, (user, code) one int64, the lists' pairs
    summed per pair and sorted, and each (row's user, key's code) found by one searchsorted."""
    return ListCounts(list_ids, list_weights).count(row_user, key_ids)
