"""`fit_contract`: a contract's tables sized from the training split's distinct ids, and its rare
ids (seen fewer than `min_count` times) sharing one row per table."""

from __future__ import annotations

import numpy as np

from features.contract import FeatureContract
from training.encoded import EncodedSplit


def fit_contract(
    contract: FeatureContract, train: EncodedSplit, min_count: int | dict = 1, **kwargs
) -> FeatureContract:
    """Size the hash buckets of every table from the distinct raw ids in the training split (a
    shared table: of all its fields together); with min_count > 1 (or a table's own, a mapping),
    ids seen fewer times there share their table's rare row."""
    seen: dict[str, list[np.ndarray]] = {}
    for side, ids in (("user", train.user_ids), ("item", train.item_ids)):
        for f, cols in contract.columns(side):
            if f.numeric:
                continue
            col = np.unique(np.asarray(ids[:, cols]).ravel())
            seen.setdefault(f.table, []).append(col[col >= 0])
    distinct = {t: int(np.unique(np.concatenate(parts)).size) for t, parts in seen.items()}
    contract = contract.fit_buckets(distinct, **kwargs)
    if max(min_count.values(), default=1) <= 1 if isinstance(min_count, dict) else min_count <= 1:
        return contract
    # occurrences per impression: a user's ids once per row of the user; in chunks of rows, so
    # memory stays bounded on full-size data
    times = np.bincount(np.asarray(train.row_user), minlength=len(train.user_ids))
    counts: dict[str, np.ndarray] = {}
    for side, ids, t in (("user", train.user_ids, times), ("item", train.item_ids, None)):
        step = max(1, (1 << 24) // max(contract.width(side), 1))
        for a in range(0, len(ids), step):
            part = contract.bucket_counts(
                side, np.asarray(ids[a : a + step]), None if t is None else t[a : a + step]
            )
            for name, c in part.items():
                counts[name] = counts.get(name, 0) + c
    return contract.with_rare(counts, min_count)
