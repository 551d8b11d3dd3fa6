"""The wide part of a wide & deep model (ModelConfig.wide; layers.Wide), fitted after the
towers: each of the model's `wide_heads` is fitted as the strong reference fits it
(training/reference.py: an L2 logistic regression by L-BFGS on every training row the head
reads, its strength chosen on the validation split), and then each head's logit becomes
`a * tower + b * regression + c`, (a, b, c) fitted on the validation rows the head reads (CVR:
the clicked ones) by a logistic regression over those two logits: stacking, on rows neither
model was fitted on. With exact matches in the towers (`--interactions match`), the regression
reads their features beside the hashed ones, as it would a spec's crosses.

Why after, and not a regression the towers learn on top of: measured on the default Ali-CCP set
(docs/model-evidence.md), towers trained on top of a fixed regression learn little from the
rows it was fitted on (its residuals there are what its penalty left), and ESMM's CVR fell to
the regression's; trained on its out-of-fold logits instead, they learned to correct a weaker
regression than the one served, and one seed in three fell below ESMM alone. Blended on held-
out rows, each model keeps what it does best, with three numbers per head fitted on thousands
of rows."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from features.contract import FeatureContract
from training.batches import iter_batches, spaced
from training.encoded import EncodedSplit
from training.metrics import auc
from training.model import TwoTowers
from training.optim import to_torch
from training.reference import (
    count_inputs,
    head_label,
    head_rows,
    regression_scores,
    strong_fit,
)

log = logging.getLogger("training.wide")
# the regressions are fitted on at most this many training rows (evenly spaced): the fit holds
# the rows' sparse design in memory, about 5 GB a million rows of Ali-CCP's layout, so a run on
# tens of millions of rows fits a sample, and its strength and blend are chosen on validation
FIT_ROWS = 1_000_000


def fit_wide(
    model: TwoTowers,
    contract: FeatureContract,
    train: EncodedSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
) -> dict:
    """Fits the trained model's wide term and its blend in place, one head per column;
    returns each head's figures: the regression's (val_auc, l2, evals, train_rows), the blend
    (a, b, c), validation AUCs of the towers alone and of the blend (on the rows the blend was
    fitted on), and the seconds it took."""
    if model.wide is None:
        raise ValueError("this model has no wide term (ModelConfig.wide)")
    every = tower_logits(model, train, contract, val_rows)  # before any blend: the towers'
    regression = model.wide.regression
    sampled = len(train_rows) > FIT_ROWS
    train_rows = spaced(train_rows, FIT_ROWS)
    # the exact matches' inputs of the regression, once for every row any head reads
    x_train, x_val = (wide_inputs(model, train, contract, r) for r in (train_rows, val_rows))
    out = {}
    for col, head in enumerate(model.wide_heads):
        t0 = time.perf_counter()
        label, val = head_label(train, head), head_rows(train, val_rows, head)
        rows = head_rows(train, train_rows, head)
        in_val = np.isin(val_rows, val)  # the head's rows (CVR: the clicked ones)
        towers = every[in_val, col]
        dense = None if x_train is None else (x_train[np.isin(train_rows, rows)], x_val[in_val])
        lr, fig, how = strong_fit(contract, train, rows, val, label, head, dense)
        with torch.no_grad():
            regression.weights.table.weight[:, col] = lr.weights.table.weight[:, 0]
            regression.bias[col] = lr.bias[0]
            if dense is not None:
                regression.dense[:, col] = lr.dense[:, 0]
        scores = regression_scores(lr, train, contract, val, None if dense is None else dense[1])
        a, b, c = blend(towers, scores, label[val])
        with torch.no_grad():
            model.wide.blend[:, col] = torch.tensor([a, b, c])
        mixed = a * towers + b * scores + c
        out[head] = {
            **fig,
            "train_rows": int(len(rows)),
            "train_rows_sampled": sampled,
            "blend": [a, b, c],
            "val_auc_towers": auc(label[val], towers),
            "val_auc_blend": auc(label[val], mixed),
            "seconds": time.perf_counter() - t0,
        }
        log.info(
            "wide term %s: %s; blend %.3f x towers + %.3f x regression + %.3f, validation AUC "
            "%.4f (towers %.4f, regression %.4f; %.0f s)",
            head,
            how,
            a,
            b,
            c,
            out[head]["val_auc_blend"],
            out[head]["val_auc_towers"],
            fig["val_auc"],
            out[head]["seconds"],
        )
    return out


@torch.no_grad()
def wide_inputs(
    model: TwoTowers, split: EncodedSplit, contract: FeatureContract, rows: np.ndarray
) -> np.ndarray | None:
    """(rows, width) the dense inputs of the model's wide regression over `rows` (its exact
    interaction's octaves: TwoTowers.wide_inputs), or None where it reads none. Combination
    counts cache nothing with the user: their octaves are the strong reference's own inputs
    (`count_inputs`, from the item side alone), not a pass over both sides."""
    if model.wide is None or model.wide.regression.dense is None:
        return None
    if model.inter[0].user_width == 0:  # CombinationCounts: no parameter, no user part
        return count_inputs(contract, split, rows)
    out = []
    for b in iter_batches(split, contract, rows, 8192):
        t = to_torch(b)
        x = model.wide_inputs(
            t["user_ids"], t["user_w"], t["user_index"], t["item_ids"], t["item_w"]
        )
        out.append(x.numpy())
    return np.concatenate(out)


@torch.no_grad()
def tower_logits(
    model: TwoTowers, split: EncodedSplit, contract: FeatureContract, rows: np.ndarray
) -> np.ndarray:
    """(rows, 2) the model's CTR and second logits of `rows`, as it stands."""
    model.eval()
    out = []
    for b in iter_batches(split, contract, rows, 8192):
        logits = model(**to_torch(b))
        out.append(torch.stack([logits.ctr, logits.cvr], dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def blend(towers: np.ndarray, regression: np.ndarray, y: np.ndarray) -> tuple[float, ...]:
    """(a, b, c) minimising the mean log loss of sigmoid(a * towers + b * regression + c)
    against `y`: a three-weight logistic regression by L-BFGS, from (1, 0, 0) (the towers
    alone)."""
    x = torch.from_numpy(np.stack([towers, regression], 1).astype(np.float64))
    target = torch.from_numpy(np.asarray(y, dtype=np.float64))
    theta = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = x @ theta[:2] + theta[2]
        loss = F.binary_cross_entropy_with_logits(z, target)
        loss.backward()
        return loss

    opt.step(closure)
    return tuple(float(v) for v in theta.detach())
