"""What a run reads: both splits of its data (an Ali-CCP folder or a spec's tables, read or taken
from the cache), the contract fitted on the training split, and the test rows' true rates where
the data has them. Training and the references read their data here, the same way."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from features.contract import FeatureContract
from training import aliccp, attributes, tables
from training.config import POOLING, TrainConfig
from training.encoded import EncodedSplit
from training.fitting import fit_contract
from training.model import MODELS
from training.splits import load_split

log = logging.getLogger("training.train")


def load_data(cfg: TrainConfig) -> tuple[FeatureContract, EncodedSplit, EncodedSplit]:
    """Both splits, read (or taken from the cache) and reported, and the contract fitted on
    the training split."""
    if cfg.spec is not None:
        # the splits' arrays mapped from disk (written anew each run: a spec's read is as fast
        # as reading a cache would be)
        spec, contract, train_split, test_split = tables.load(
            cfg.spec, cfg.seed, cfg.orphans, out_dir=cache_dir(cfg)
        )
        _log_splits(cfg, train_split, test_split)
        contract = fit_contract(
            contract,
            train_split,
            min_count=spec.min_counts(cfg.min_count),
            max_buckets=cfg.max_buckets,
            fixed=spec.fixed_buckets(),
        )
        return contract, train_split, test_split
    contract = FeatureContract.default(
        cfg.max_len, **POOLING[cfg.pooling], seed=cfg.seed, without=cfg.without
    )
    cache = cache_dir(cfg)
    train_split = load_split(cfg.data, "train", contract, cache, cfg.orphans)
    test_split = load_split(cfg.data, "test", contract, cache, cfg.orphans)
    _log_splits(cfg, train_split, test_split)
    if MODELS[cfg.model].needs_action and (train_split.action is None or test_split.action is None):
        raise SystemExit(
            f"--model {cfg.model} needs the post-click action label: {cfg.data} has no "
            "action_train.csv / action_test.csv (sample_id,action). The generator writes them "
            "with --action-label."
        )
    if cfg.items is not None:
        table = attributes.read_item_table(cfg.items)
        names = attributes.numeric_names(table, cfg.numeric)
        contract, (train_split, test_split) = attributes.attach(
            contract, (train_split, test_split), table, names, cfg.numeric_buckets
        )
    contract = fit_contract(
        contract, train_split, min_count=cfg.min_count, max_buckets=cfg.max_buckets
    )
    return contract, train_split, test_split


def _log_splits(cfg: TrainConfig, train_split: EncodedSplit, test_split: EncodedSplit):
    for name, s in (("train", train_split), ("test", test_split)):
        r = s.report
        log.info(
            "%s: %d rows, %d users, %d malformed lines skipped, %d conversions without click (%s)",
            name,
            len(s),
            len(s.user_ids),
            r.malformed,
            r.orphan_conversions,
            cfg.orphans,
        )


def test_truth(cfg: TrainConfig, test_split: EncodedSplit) -> dict | None:
    """The generator's true probabilities of the test rows, where the data has them."""
    if cfg.spec is not None:
        return tables.read_truth(cfg.spec, "test", np.asarray(test_split.sample_id))
    return aliccp.read_truth(cfg.data, "test", np.asarray(test_split.sample_id))


def cache_dir(cfg: TrainConfig) -> Path:
    """Where a run's encoded arrays are kept."""
    if cfg.cache is not None:
        return cfg.cache
    if cfg.data is not None and os.access(cfg.data, os.W_OK):
        return cfg.data / ".encoded"
    return cfg.out / "encoded"


# ---- command line --------------------------------------------------------------------------
