"""The cheap reference a CVR model must beat: a sparse logistic regression over every hashed
feature, trained on clicked rows (metrics.json's "reference")."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.contract import FeatureContract
from training import data as D
from training.layers import FieldPooling
from training.metrics import auc
from training.optim import make_optimizers, step, to_torch

# Small batches and one learning rate for the weights and the bias; epochs until the validation
# AUC stops improving, at most max_epochs.
LR_REFERENCE = {"batch_size": 256, "lr": 0.02, "max_epochs": 8}


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


def logistic_reference(
    contract: FeatureContract,
    train: D.EncodedSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    test: D.EncodedSplit,
    seed: int,
) -> dict[str, float]:
    """The reference's CVR AUC on the clicked test rows, from its best epoch on the clicked
    validation rows."""
    fit, val = (rows[train.click[rows] > 0] for rows in (train_rows, val_rows))
    tst = np.flatnonzero(np.asarray(test.click) > 0)
    torch.manual_seed(seed)
    model = LogisticRegression(contract)
    opts = make_optimizers(model, LR_REFERENCE["lr"], LR_REFERENCE["lr"])
    rng = np.random.default_rng(seed)
    best, best_state, epochs = -1.0, None, 0
    for _ in range(LR_REFERENCE["max_epochs"]):
        model.train()
        order = D.session_order(train, fit, rng)
        for b in D.iter_batches(train, contract, order, LR_REFERENCE["batch_size"]):
            logits = model(**to_torch(b))
            step(opts, F.binary_cross_entropy_with_logits(logits, torch.from_numpy(b.conv)))
        val_auc = auc(train.conv[val], _scores(model, train, contract, val))
        if not val_auc > best:
            break
        best, best_state, epochs = val_auc, copy.deepcopy(model.state_dict()), epochs + 1
    model.load_state_dict(best_state)
    return {
        "lr_cvr_auc": auc(test.conv[tst], _scores(model, test, contract, tst)),
        "lr_cvr_val_auc": best,
        "lr_cvr_epochs": epochs,
        "lr_cvr_train_rows": int(len(fit)),
    }


@torch.no_grad()
def _scores(
    model: LogisticRegression, split: D.EncodedSplit, contract: FeatureContract, rows: np.ndarray
) -> np.ndarray:
    model.eval()
    batches = D.iter_batches(split, contract, rows, 8192)
    return np.concatenate([model(**to_torch(b)).numpy() for b in batches])
