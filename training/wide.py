"""The wide part of a wide & deep model (ModelConfig.wide; layers.Wide). Before the towers
train, each of the model's `wide_heads` is fitted as the strong reference fits it
(training/reference.py: an L2 logistic regression by L-BFGS on every training row the head
reads, its strength chosen on the validation split), and its weights become the wide term's
column, held fixed. The towers then learn only what the linear model leaves: a model that
starts from the reference's logits rather than from nothing, and whose early-stopped epoch is
judged on the same validation split the reference's strength was chosen on."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from features.contract import FeatureContract
from training.encoded import EncodedSplit
from training.model import TwoTowers
from training.reference import head_label, head_rows, strong_fit

log = logging.getLogger("training.wide")


def fit_wide(
    model: TwoTowers,
    contract: FeatureContract,
    train: EncodedSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
) -> dict:
    """Fits the model's wide term in place, one head per column; returns each head's figures
    (val_auc, l2, evals, train_rows, seconds) for the run's metrics."""
    if model.wide is None:
        raise ValueError("this model has no wide term (ModelConfig.wide)")
    out = {}
    for col, head in enumerate(model.wide_heads):
        t0 = time.perf_counter()
        rows, val = head_rows(train, train_rows, head), head_rows(train, val_rows, head)
        lr, figures, how = strong_fit(
            contract, train, rows, val, head_label(train, head), seed, head
        )
        with torch.no_grad():
            model.wide.weights.table.weight[:, col] = lr.weights.table.weight[:, 0]
            model.wide.bias[col] = lr.bias
        out[head] = {**figures, "train_rows": int(len(rows)), "seconds": time.perf_counter() - t0}
        log.info(
            "wide term %s: %s on %s rows (%.0f s)",
            head,
            how,
            f"{len(rows):,}",
            out[head]["seconds"],
        )
    return out
