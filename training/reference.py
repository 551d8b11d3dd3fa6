"""The cheap reference every head must beat: a sparse logistic regression over every hashed
feature, one per head (metrics.json's "reference"): CTR on every impression, CVR on clicked
impressions, CTCVR (click and conversion) on every impression."""

from __future__ import annotations

import copy
import json
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.contract import FeatureContract
from training.batches import iter_batches, session_order, split_sessions
from training.config import TrainConfig
from training.encoded import EncodedSplit
from training.inputs import load_data, test_truth
from training.layers import FieldPooling
from training.metrics import auc, oracle_metrics, soft_auc
from training.optim import make_optimizers, step, to_torch

log = logging.getLogger("training.reference")

# One learning rate for the weights and the bias; epochs until the validation AUC stops
# improving, at most max_epochs. Small batches for CVR (clicked rows: a few percent of the data);
# the heads fitted on every impression see twenty times the rows and take batches four times as
# large, so each reference costs about what one epoch of a model does.
LR_REFERENCE = {"batch_size": 256, "lr": 0.02, "max_epochs": 8}
ALL_ROWS_BATCH = 1024


class LogisticRegression(nn.Module):
    """Sparse logistic regression over every hashed feature: one weight per embedding row."""

    def __init__(self, contract: FeatureContract):
        super().__init__()
        self.weights = FieldPooling(contract, 1)
        nn.init.zeros_(self.weights.table.weight)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        user_ids: torch.Tensor,
        user_w: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
    ) -> torch.Tensor:
        u = self.weights(user_ids, user_w, "user").sum(1)  # (U,)
        x = self.weights(item_ids, item_w, "item").sum(1)  # (B,)
        return u.index_select(0, user_index) + x + self.bias


# Each head's reference: the rows it is fitted and scored on, and its label.
HEADS = ("ctr", "cvr", "ctcvr")


def _rows(split: EncodedSplit, rows: np.ndarray, head: str) -> np.ndarray:
    """CVR is P(conversion | click): clicked rows only; CTR and CTCVR: every impression."""
    return rows[np.asarray(split.click)[rows] > 0] if head == "cvr" else rows


def _label(split: EncodedSplit, head: str) -> np.ndarray:
    return np.asarray(split.click if head == "ctr" else split.conv)


def logistic_reference(
    contract: FeatureContract,
    train: EncodedSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    test: EncodedSplit,
    seed: int,
    heads: tuple[str, ...] = HEADS,
    truth: dict | None = None,
) -> dict:
    """One logistic regression per head, each the best of its epochs on its validation rows:
    `{head}_auc` on the test split (CVR on clicked rows), with `{head}_val_auc`,
    `{head}_epochs`, `{head}_train_rows` and `{head}_seconds`. With the generator's `truth`
    (training.inputs.test_truth), also `cvr_auc_entire`: the CVR regression's
    scores of every impression against the true P(conversion | click), as for a model."""
    out: dict = {}
    for head in heads:
        t0 = time.perf_counter()
        fit, val = _rows(train, train_rows, head), _rows(train, val_rows, head)
        tst = _rows(test, np.arange(len(test)), head)
        batch = LR_REFERENCE["batch_size"] if head == "cvr" else ALL_ROWS_BATCH
        model, best, epochs = _fit(contract, train, fit, val, _label(train, head), seed, batch)
        out[f"{head}_auc"] = auc(_label(test, head)[tst], _scores(model, test, contract, tst))
        out[f"{head}_val_auc"], out[f"{head}_epochs"] = best, epochs
        out[f"{head}_train_rows"] = int(len(fit))
        out[f"{head}_seconds"] = time.perf_counter() - t0
        if head == "cvr" and truth is not None:
            every = _scores(model, test, contract, np.arange(len(test)))
            out["cvr_auc_entire"] = soft_auc(truth["p_conversion"], every)
        log.info(
            "logistic reference %s: test AUC %.4f (best of %d epoch(s) on %s rows, %.0f s)",
            head,
            out[f"{head}_auc"],
            epochs,
            f"{len(fit):,}",
            out[f"{head}_seconds"],
        )
    return out


def reference_metrics(cfg: TrainConfig) -> dict:
    """The references alone, as a run's metrics: the `lr` row of training.compare, on the
    same data, contract, validation split and seed as every model's run."""
    contract, train_split, test_split = load_data(cfg)
    train_rows, val_rows = split_sessions(train_split, cfg.val_fraction, cfg.seed)
    truth = test_truth(cfg, test_split)
    ref = logistic_reference(
        contract, train_split, train_rows, val_rows, test_split, cfg.seed, truth=truth
    )
    metrics = {
        "model": "lr",
        **{k: ref[k] for k in ("ctr_auc", "cvr_auc", "ctcvr_auc", "cvr_auc_entire") if k in ref},
        "best_epoch": ref["cvr_epochs"],
        "train_seconds": sum(ref[f"{h}_seconds"] for h in HEADS),
        "reference": ref,
    }
    if truth is not None:
        metrics["oracle"] = oracle_metrics(truth, test_split.click, test_split.conv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _fit(
    contract: FeatureContract,
    train: EncodedSplit,
    fit: np.ndarray,
    val: np.ndarray,
    label: np.ndarray,
    seed: int,
    batch_size: int,
) -> tuple[LogisticRegression, float, int]:
    """Epochs until the validation AUC stops improving; the best epoch's model."""
    torch.manual_seed(seed)
    model = LogisticRegression(contract)
    opts = make_optimizers(model, LR_REFERENCE["lr"], LR_REFERENCE["lr"])
    rng = np.random.default_rng(seed)
    best, best_state, epochs = -1.0, copy.deepcopy(model.state_dict()), 0
    for _ in range(LR_REFERENCE["max_epochs"]):
        model.train()
        order = session_order(train, fit, rng)
        for b in iter_batches(train, contract, order, batch_size):
            y = torch.from_numpy(label[b.rows].astype(np.float32))
            step(opts, F.binary_cross_entropy_with_logits(model(**to_torch(b)), y))
        val_auc = auc(label[val], _scores(model, train, contract, val))
        if not val_auc > best:
            break
        best, best_state, epochs = val_auc, copy.deepcopy(model.state_dict()), epochs + 1
    model.load_state_dict(best_state)
    return model, best, epochs


@torch.no_grad()
def _scores(
    model: LogisticRegression, split: EncodedSplit, contract: FeatureContract, rows: np.ndarray
) -> np.ndarray:
    model.eval()
    batches = iter_batches(split, contract, rows, 8192)
    return np.concatenate([model(**to_torch(b)).numpy() for b in batches])
