"""features/values.py: the cross count served for one user equals training's for many."""

from __future__ import annotations

import numpy as np

from features import values as V


def test_one_users_count_is_the_many_users_count_bit_for_bit():
    """The service counts with OneList (one user per request), training with ListCounts (all
    users at once): the same float32 for every row, whatever the lists, keys and padding."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n_list, width, rows = rng.integers(0, 300), rng.integers(1, 12), rng.integers(1, 600)
        ids = rng.integers(-1, 50, n_list)  # repeats, padding, keys no list holds
        weights = (rng.random(n_list) * rng.integers(1, 20, n_list)).astype(np.float32)
        keys = rng.integers(-1, 60, (rows, width))
        many = V.count_in(ids[None], weights[None], np.zeros(rows, np.int64), keys)
        one = V.OneList(ids, weights).count(keys)
        assert one.dtype == many.dtype == np.float32 and np.array_equal(one, many)


def test_an_empty_list_or_no_keys_count_zero():
    assert V.OneList(np.full(5, -1), np.ones(5)).count(np.array([[3], [4]])).tolist() == [0, 0]
    assert V.OneList(np.array([3]), np.ones(1)).count(np.full((2, 2), -1)).tolist() == [0, 0]
