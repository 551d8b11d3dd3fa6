"""The wide part of a wide & deep model (ModelConfig.wide; layers.Wide). Before the towers
train, each of the model's `wide_heads` is fitted as the strong reference fits it
(training/reference.py: an L2 logistic regression by L-BFGS on every training row the head
reads, its strength chosen on the validation split), and its weights become the wide term's
column, held fixed: what the model serves is that regression (times a trained gain) plus the
towers.

The towers are trained on top of the regression's logits, but not of the served regression's
on the training rows: a regression scores the rows it was fitted on better than any others (its
residuals there are what its penalty left, not what it cannot model). Each training row's wide
logits come instead from a regression fitted on the other folds of sessions (FOLDS folds,
each fit choosing its own strength on the validation split): stacking's out-of-fold
predictions. Validation and test rows, which no regression saw, are scored by the served
regression, as in serving."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from features.contract import FeatureContract
from training.encoded import EncodedSplit
from training.model import TwoTowers
from training.reference import head_label, head_rows, regression_scores, strong_fit

log = logging.getLogger("training.wide")

FOLDS = 2


@dataclasses.dataclass
class FittedWide:
    # per head: the served regression's val_auc, l2, evals, train_rows, seconds, and each
    # fold's l2 (folds_l2)
    figures: dict
    out_of_fold: np.ndarray  # (split rows, heads) float32: each training row's wide logits


def fold_of(train: EncodedSplit, rows: np.ndarray, seed: int) -> np.ndarray:
    """Each of `rows`' fold, 0 to FOLDS - 1, drawn per session: a session's rows share one."""
    sessions = np.asarray(train.sessions)
    fold = np.random.default_rng([seed, 1]).integers(0, FOLDS, int(sessions.max()) + 1)
    return fold[sessions[rows]]


def fit_wide(
    model: TwoTowers,
    contract: FeatureContract,
    train: EncodedSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
) -> FittedWide:
    """Fits the model's wide term in place, one head per column, and every training row's
    out-of-fold logits for the towers to train on top of."""
    if model.wide is None:
        raise ValueError("this model has no wide term (ModelConfig.wide)")
    out_of_fold = np.zeros((len(train), len(model.wide_heads)), np.float32)
    fold = fold_of(train, train_rows, seed)
    figures = {}
    for col, head in enumerate(model.wide_heads):
        t0 = time.perf_counter()
        label, val = head_label(train, head), head_rows(train, val_rows, head)
        rows = head_rows(train, train_rows, head)
        lr, fig, how = strong_fit(contract, train, rows, val, label, seed, head)
        with torch.no_grad():
            model.wide.weights.table.weight[:, col] = lr.weights.table.weight[:, 0]
            model.wide.bias[col] = lr.bias
        fig["folds_l2"] = []
        for k in range(FOLDS):
            other = head_rows(train, train_rows[fold != k], head)
            lr_k, fig_k, _ = strong_fit(contract, train, other, val, label, seed, head)
            mine = train_rows[fold == k]
            out_of_fold[mine, col] = regression_scores(lr_k, train, contract, mine)
            fig["folds_l2"].append(fig_k["l2"])
        seconds = time.perf_counter() - t0
        figures[head] = {**fig, "train_rows": int(len(rows)), "seconds": seconds}
        log.info(
            "wide term %s: %s on %s rows, %d folds (%.0f s)",
            head,
            how,
            f"{len(rows):,}",
            FOLDS,
            seconds,
        )
    return FittedWide(figures, out_of_fold)
