"""Batches: a split's rows in training order (shuffled and split by session) and the model inputs
of each batch, hashed to embedding rows through the contract."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from features.contract import FeatureContract
from training.encoded import EncodedSplit


@dataclasses.dataclass
class Batch:
    """Model inputs for a batch of rows and the users they belong to (hashed to rows)."""

    user_ids: np.ndarray  # (U, user width) int64 embedding rows
    user_w: np.ndarray  # (U, user width) float32
    user_index: np.ndarray  # (B,) int64 row -> user
    item_ids: np.ndarray  # (B, item width) int64 embedding rows
    item_w: np.ndarray  # (B, item width) float32
    click: np.ndarray  # (B,) float32
    conv: np.ndarray  # (B,) float32
    rows: np.ndarray  # (B,) indices into the split
    action: np.ndarray | None = None  # (B,) float32, when the split has the label


def make_batch(split: EncodedSplit, contract: FeatureContract, rows: np.ndarray) -> Batch:
    users, user_index = np.unique(split.row_user[rows], return_inverse=True)
    uid, uw = contract.hash_side("user", split.user_ids[users], split.user_vals[users])
    iid, iw = contract.hash_side("item", split.item_ids[rows], split.item_vals[rows])
    return Batch(
        uid,
        uw,
        user_index.astype(np.int64),
        iid,
        iw,
        split.click[rows].astype(np.float32),
        split.conv[rows].astype(np.float32),
        rows,
        None if split.action is None else split.action[rows].astype(np.float32),
    )


def session_order(split: EncodedSplit, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` shuffled by session: sessions in random order, a session's rows together, so a
    batch holds few distinct users and each user's heavy features are pooled once."""
    sessions = np.asarray(split.sessions)[rows]
    rank = rng.permutation(_n_sessions(split))
    return rows[np.argsort(rank[sessions], kind="stable")]


def _n_sessions(split: EncodedSplit) -> int:
    if split.session is None:
        return len(split.user_ids)
    return int(np.asarray(split.session).max(initial=-1)) + 1


def iter_batches(
    split: EncodedSplit, contract: FeatureContract, rows: np.ndarray, batch_size: int
) -> Iterator[Batch]:
    for start in range(0, len(rows), batch_size):
        yield make_batch(split, contract, rows[start : start + batch_size])


def split_sessions(
    split: EncodedSplit, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation): a random `fraction` of sessions goes to validation."""
    rng = np.random.default_rng(seed)
    val_sessions = rng.random(_n_sessions(split)) < fraction
    is_val = val_sessions[np.asarray(split.sessions)]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def spaced(rows: np.ndarray, cap: int) -> np.ndarray:
    """At most `cap` of `rows`, sorted and evenly spaced (no draw: the same rows on every rank
    and every run), for fits that need a bounded sample of a split, not all of it."""
    rows = np.sort(np.asarray(rows))
    if len(rows) <= cap:
        return rows
    return rows[np.linspace(0, len(rows) - 1, cap).astype(np.int64)]
