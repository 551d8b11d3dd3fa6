"""The references every head must beat: logistic regressions over every hashed feature, one per
head: CTR on every impression, CVR on clicked impressions, CTCVR (click and conversion) on every
impression.

Two of them. `logistic_reference` (metrics.json's "reference", and `lr` in training.compare) is
the cheap one: minibatch steps until the validation AUC stops improving, no penalty.
`strong_reference` (`lr-strong`) is a standard L2 logistic regression as a linear baseline is
meant to be fitted: the whole training split at once by L-BFGS with a strong Wolfe line search,
run towards convergence, its L2 strength chosen per head on the validation split from a path of
strengths (strongest first, each fit starting from the one before: warm starts), the best by
validation AUC kept. It reads every feature the models can: on Ali-CCP data, the combination
fields' counts too, as the one-hot of their octaves (`count_inputs`), as a spec's crosses give
it their buckets. It costs tens of seconds a head where the cheap one costs seconds, and it
is what a model has to beat to be worth serving (issue 26)."""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from features.contract import FeatureContract
from training.batches import iter_batches, session_order, split_sessions
from training.config import TrainConfig
from training.encoded import EncodedSplit
from training.inputs import load_data, test_truth
from training.interactions import CombinationCounts, reads_counts
from training.layers import LogisticRegression
from training.metrics import auc, oracle_metrics, soft_auc
from training.optim import make_optimizers, step, to_torch

log = logging.getLogger("training.reference")

# One learning rate for the weights and the bias; epochs until the validation AUC stops
# improving, at most max_epochs. Small batches for CVR (clicked rows: a few percent of the data);
# the heads fitted on every impression see twenty times the rows and take batches four times as
# large, so each reference costs about what one epoch of a model does.
LR_REFERENCE = {"batch_size": 256, "lr": 0.02, "max_epochs": 8}
ALL_ROWS_BATCH = 1024


# Each head's reference: the rows it is fitted and scored on, and its label.
HEADS = ("ctr", "cvr", "ctcvr")


def head_rows(split: EncodedSplit, rows: np.ndarray, head: str) -> np.ndarray:
    """CVR is P(conversion | click): clicked rows only; CTR and CTCVR: every impression."""
    return rows[np.asarray(split.click)[rows] > 0] if head == "cvr" else rows


def head_label(split: EncodedSplit, head: str) -> np.ndarray:
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

    def fit(head: str, rows: np.ndarray, val: np.ndarray, label: np.ndarray):
        batch = LR_REFERENCE["batch_size"] if head == "cvr" else ALL_ROWS_BATCH
        model, best, epochs = _fit(contract, train, rows, val, label, seed, batch)
        return model, {"val_auc": best, "epochs": epochs}, f"best of {epochs} epoch(s)"

    return _per_head(
        "logistic reference", fit, contract, train, train_rows, val_rows, test, heads, truth
    )


def _per_head(
    name, fit, contract, train, train_rows, val_rows, test, heads, truth, inputs=None
) -> dict:
    """Each head's regression fitted by `fit(head, rows, val rows, label)` -> (model, its
    `{head}_...` figures, how it was fitted, for the log), scored on the test split (CVR on
    clicked rows; with `truth`, the CVR regression over every impression too); with
    `inputs(split, rows)`, the rows' dense inputs it reads beside the hashed features."""

    def scores(model, rows):
        dense = None if inputs is None else inputs(test, rows)
        return regression_scores(model, test, contract, rows, dense)

    out: dict = {}
    for head in heads:
        t0 = time.perf_counter()
        rows, val = head_rows(train, train_rows, head), head_rows(train, val_rows, head)
        model, figures, how = fit(head, rows, val, head_label(train, head))
        tst = head_rows(test, np.arange(len(test)), head)
        out[f"{head}_auc"] = auc(head_label(test, head)[tst], scores(model, tst))
        out.update({f"{head}_{k}": v for k, v in figures.items()})
        out[f"{head}_train_rows"] = int(len(rows))
        out[f"{head}_seconds"] = time.perf_counter() - t0
        if head == "cvr" and truth is not None:
            every = scores(model, np.arange(len(test)))
            out["cvr_auc_entire"] = soft_auc(truth["p_conversion"], every)
        log.info(
            "%s %s: test AUC %.4f (%s on %s rows, %.0f s)",
            name,
            head,
            out[f"{head}_auc"],
            how,
            f"{len(rows):,}",
            out[f"{head}_seconds"],
        )
    return out


# The strong reference's L2 strengths (on the mean log loss; scikit-learn's C = 1 is 1/rows),
# strongest first in half decades from 1 (the shared regime's CVR chose 0.1, the strongest of a
# path that began there), and the L-BFGS evaluations each fit may take.
STRONG = {"l2": tuple(10.0 ** (-k / 2) for k in range(13)), "max_evals": 100}


def strong_reference(
    contract: FeatureContract,
    train: EncodedSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    test: EncodedSplit,
    seed: int,
    heads: tuple[str, ...] = HEADS,
    truth: dict | None = None,
) -> dict:
    """One L2 logistic regression per head, fitted by L-BFGS on all its training rows at once,
    its L2 strength the best of STRONG's path by validation AUC (the path stops after two
    strengths worse than the best): `{head}_auc` on the test split, with `{head}_val_auc`,
    `{head}_l2`, `{head}_evals`, `{head}_train_rows` and `{head}_seconds`. Where the contract
    has combination counts, it reads their octaves too (`count_inputs`)."""
    inputs = None
    if reads_counts(contract):  # each split's rows once, then indexed
        every = {id(x): count_inputs(contract, x, np.arange(len(x))) for x in (train, test)}

        def inputs(split: EncodedSplit, rows: np.ndarray) -> np.ndarray:
            return every[id(split)][rows]

    def fit(head: str, rows: np.ndarray, val: np.ndarray, label: np.ndarray):
        dense = None if inputs is None else (inputs(train, rows), inputs(train, val))
        return strong_fit(contract, train, rows, val, label, head, dense)

    return _per_head(
        "strong reference", fit, contract, train, train_rows, val_rows, test, heads, truth, inputs
    )


@torch.no_grad()
def count_inputs(contract: FeatureContract, split: EncodedSplit, rows: np.ndarray) -> np.ndarray:
    """(rows, width) the one-hot of the combination fields' counts' octaves over `rows`
    (CombinationCounts.wide_features: what a wide term's regression reads of them), from the
    item side alone."""
    counts = CombinationCounts(contract)
    out = [np.zeros((0, counts.wide_width), np.float32)]
    for a in range(0, len(rows), 65536):
        r = rows[a : a + 65536]
        ids, w = contract.hash_side("item", split.item_ids[r], split.item_vals[r])
        f = counts.features(None, None, None, torch.from_numpy(ids), torch.from_numpy(w))
        out.append(counts.wide_features(f).numpy())
    return np.concatenate(out)


def strong_fit(
    contract: FeatureContract,
    train: EncodedSplit,
    rows: np.ndarray,
    val: np.ndarray,
    label: np.ndarray,
    head: str = "",
    dense: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[LogisticRegression, dict, str]:
    """One L2 logistic regression of `label` on training `rows`, its strength the best of
    STRONG's path by AUC on `val` (stopping after two strengths worse than the best): the
    fitted model, its figures (val_auc, l2, evals) and how it was fitted, for a log line. With
    `dense` ((rows, width) inputs of `rows` and of `val`, computed once by the caller), it
    reads those beside the hashed features. It starts from zero and draws nothing: no seed."""
    width = 0 if dense is None else dense[0].shape[1]
    model = LogisticRegression(contract, dense=width)
    (batch,) = iter_batches(train, contract, rows, max(len(rows), 1))
    design = _Design(batch, contract.num_rows, label[batch.rows], None if width == 0 else dense[0])
    theta = torch.zeros(contract.num_rows + width + 1, dtype=torch.float64, requires_grad=True)
    val_dense = None if width == 0 else dense[1]
    best, best_theta, worse, evals = (-1.0, None, None), None, 0, 0
    for l2 in STRONG["l2"]:
        evals += _lbfgs(design, theta, l2, STRONG["max_evals"])
        design.into(model, theta)
        val_auc = auc(label[val], regression_scores(model, train, contract, val, val_dense))
        log.info("strong reference %s: l2 %g, validation AUC %.4f", head, l2, val_auc)
        if val_auc > best[0]:
            best, best_theta, worse = (val_auc, l2, evals), theta.detach().clone(), 0
        else:
            worse += 1
            if worse == 2:
                break
    design.into(model, best_theta)
    figures = dict(zip(("val_auc", "l2", "evals"), best, strict=True))
    return model, figures, f"l2 {best[1]:g}, {best[2]} evaluations"


class _Design:
    """A batch's hashed rows as the sparse design matrices of a logistic regression, one per
    side (rows x hashed ids, each entry its pooling weight; CSR, with its transpose for the
    gradient). The model's logit is then a sum of weights over a row's entries (the user side's
    once per user, taken onto its impressions), exactly LogisticRegression's; the loss and its
    gradient are two sparse products per side, in float64, all that L-BFGS asks for: 12 ms
    against 62 ms for bincounts over the entries (the default tables' 202k CTR rows, 2 cores)."""

    def __init__(self, batch, num_rows: int, label: np.ndarray, dense: np.ndarray | None = None):
        self.y = torch.from_numpy(label.astype(np.float64))
        self.user_index = torch.from_numpy(np.asarray(batch.user_index, dtype=np.int64))
        self.n_users = len(batch.user_ids)
        self.num_rows = num_rows
        ids, w, cols = batch.item_ids, batch.item_w, num_rows
        if dense is not None:  # the dense inputs as columns past the hashed rows
            n, d = dense.shape
            ids = np.concatenate([ids, np.broadcast_to(num_rows + np.arange(d), (n, d))], 1)
            w, cols = np.concatenate([w, dense], 1), num_rows + d
        self.items, self.items_t = _matrices(ids, w, len(label), cols)
        self.users, self.users_t = _matrices(batch.user_ids, batch.user_w, self.n_users, cols)

    def loss_grad(self, theta: torch.Tensor, l2: float) -> tuple[float, torch.Tensor]:
        w, b = theta[:-1], theta[-1]
        z = self.items @ w + (self.users @ w).index_select(0, self.user_index) + b
        loss = (torch.logaddexp(z, torch.zeros_like(z)) - self.y * z).mean() + 0.5 * l2 * w.dot(w)
        g = (torch.sigmoid(z) - self.y) / len(self.y)
        per_user = torch.bincount(self.user_index, g, self.n_users)
        grad = torch.empty_like(theta)
        grad[:-1] = self.items_t @ g + self.users_t @ per_user + l2 * w
        grad[0] = 0.0  # the padding row stays 0
        grad[-1] = g.sum()
        return float(loss), grad

    def into(self, model: LogisticRegression, theta: torch.Tensor) -> None:
        """The fitted weights into the module that scores."""
        n = self.num_rows
        with torch.no_grad():
            model.weights.table.weight.copy_(theta[:n, None].to(torch.float32))
            if model.dense is not None:
                model.dense.copy_(theta[n:-1, None].to(torch.float32))
            model.bias.copy_(theta[-1].to(torch.float32))


def _matrices(ids, w, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows x cols) CSR of every non-padding entry (row, hashed id, weight), repeated ids
    summed, and its transpose."""
    ids, w = np.asarray(ids), np.asarray(w, dtype=np.float64)
    keep = (ids > 0) & (w != 0)
    r, c = np.nonzero(keep)[0].astype(np.int64), ids[keep].astype(np.int64)
    v = torch.from_numpy(w[keep])
    with warnings.catch_warnings():  # CSR's "beta" notice; sparse products are all it does
        warnings.simplefilter("ignore", UserWarning)

        def csr(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
            idx = torch.from_numpy(np.vstack([a, b]))
            coo = torch.sparse_coo_tensor(idx, v, shape, check_invariants=False)
            return coo.coalesce().to_sparse_csr()

        return csr(r, c, (rows, cols)), csr(c, r, (cols, rows))


def _lbfgs(design: _Design, theta: torch.Tensor, l2: float, max_evals: int) -> int:
    """Mean log loss + l2/2 |w|^2 (the bias unpenalised) minimised from `theta` (the weights
    and the bias, updated in place); the loss and gradient evaluations it took."""
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_evals,
        max_eval=max_evals,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    evals = 0

    def closure():
        nonlocal evals
        evals += 1
        loss, theta.grad = design.loss_grad(theta.detach(), l2)
        return torch.tensor(loss, dtype=torch.float64)

    opt.step(closure)
    return evals


def reference_metrics(cfg: TrainConfig, strong: bool = False) -> dict:
    """The references alone, as a run's metrics: the `lr` (or with `strong`, `lr-strong`) row
    of training.compare, on the same data, contract, validation split and seed as every model's
    run."""
    contract, train_split, test_split = load_data(cfg)
    train_rows, val_rows = split_sessions(train_split, cfg.val_fraction, cfg.seed)
    truth = test_truth(cfg, test_split)
    fit = strong_reference if strong else logistic_reference
    ref = fit(contract, train_split, train_rows, val_rows, test_split, cfg.seed, truth=truth)
    metrics = {
        "model": "lr-strong" if strong else "lr",
        **{k: ref[k] for k in ("ctr_auc", "cvr_auc", "ctcvr_auc", "cvr_auc_entire") if k in ref},
        "best_epoch": ref.get("cvr_epochs"),  # (none for L-BFGS: its l2 is in "reference")
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
            step(opts, F.binary_cross_entropy_with_logits(model(**to_torch(b))[:, 0], y))
        val_auc = auc(label[val], regression_scores(model, train, contract, val))
        if not val_auc > best:
            break
        best, best_state, epochs = val_auc, copy.deepcopy(model.state_dict()), epochs + 1
    model.load_state_dict(best_state)
    return model, best, epochs


@torch.no_grad()
def regression_scores(
    model: LogisticRegression,
    split: EncodedSplit,
    contract: FeatureContract,
    rows: np.ndarray,
    dense: np.ndarray | None = None,
) -> np.ndarray:
    """The regression's first head over `rows` (with `dense`, the rows' (rows, width) dense
    inputs too, in the order of `rows`)."""
    model.eval()
    out, size = [], 8192
    for i, b in enumerate(iter_batches(split, contract, rows, size)):
        x = None if dense is None else torch.from_numpy(dense[i * size : (i + 1) * size])
        out.append(model(**to_torch(b), dense=x)[:, 0].numpy())
    return np.concatenate(out)
