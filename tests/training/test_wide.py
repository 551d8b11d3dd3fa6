"""The wide term of a wide & deep model is the strong reference itself: fit_wide fits each of
the towers' heads as `lr-strong` does and holds the result in the model, so that with the
towers silenced the model's logits are the regressions' logits; and each training row's logits
for the towers to train on come from a regression fitted without the row's fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.batches import iter_batches, split_sessions
from training.config import TrainConfig
from training.inputs import load_data
from training.model import ModelConfig, build_model
from training.optim import to_torch
from training.reference import STRONG, head_label, head_rows, regression_scores, strong_fit
from training.wide import FOLDS, fit_wide, fold_of


@pytest.fixture(scope="module")
def data(small_generated, tmp_path_factory):
    cfg = TrainConfig(data=small_generated, out=tmp_path_factory.mktemp("wide"), seed=0)
    contract, train, test = load_data(cfg)
    train_rows, val_rows = split_sessions(train, cfg.val_fraction, cfg.seed)
    return contract, train, test, train_rows, val_rows


@pytest.fixture
def short_path(monkeypatch):
    monkeypatch.setitem(STRONG, "l2", (1e-2, 1e-3, 1e-4))
    monkeypatch.setitem(STRONG, "max_evals", 30)


@pytest.mark.parametrize(("kind", "wide"), [("esmm", "all"), ("division", "all"), ("base", "ctr")])
def test_the_wide_term_is_each_heads_fitted_regression(data, short_path, kind, wide):
    contract, train, test, train_rows, val_rows = data
    torch.manual_seed(0)
    model = build_model(ModelConfig(contract.to_dict(), kind=kind, wide=wide))
    fitted = fit_wide(model, contract, train, train_rows, val_rows, seed=0)
    assert list(fitted.figures) == list(model.wide_heads)
    assert len(model.wide_heads) == (1 if wide == "ctr" else 2)
    for tower in (model.ctr, model.cvr):  # the towers say nothing: the wide term alone
        with torch.no_grad():
            tower.head[-1].weight.zero_()
            tower.head[-1].bias.zero_()
    model.eval()
    rows = np.arange(0, len(test), 7)
    (b,) = iter_batches(test, contract, rows, len(rows))
    with torch.no_grad():
        logits = model(**to_torch(b))
    for col, head in enumerate(model.wide_heads):
        fit_rows = head_rows(train, train_rows, head)
        val = head_rows(train, val_rows, head)
        lr, fig, _ = strong_fit(contract, train, fit_rows, val, head_label(train, head), 0, head)
        got = fitted.figures[head]
        assert (got["l2"], got["val_auc"], got["train_rows"]) == (
            fig["l2"],
            fig["val_auc"],
            len(fit_rows),
        )
        with torch.no_grad():
            want = lr(**to_torch(b))
        torch.testing.assert_close(
            logits.ctr if col == 0 else logits.cvr, want, atol=1e-5, rtol=1e-5
        )
    # CVR's regression reads the clicked rows; DIVISION's second head, CTCVR, every row
    if wide == "all":
        second = fitted.figures[model.wide_heads[1]]["train_rows"]
        assert (second < len(train_rows)) == (kind == "esmm")


def test_each_training_rows_wide_logits_come_from_the_other_folds(data, short_path):
    contract, train, _, train_rows, val_rows = data
    model = build_model(ModelConfig(contract.to_dict(), kind="esmm", wide="ctr"))
    fitted = fit_wide(model, contract, train, train_rows, val_rows, seed=3)
    fold = fold_of(train, train_rows, seed=3)
    sessions = np.asarray(train.sessions)[train_rows]
    for k in range(FOLDS):  # whole sessions to a fold, every fold used
        assert 0.3 < np.mean(fold == k) < 0.7
        assert not set(sessions[fold == k]) & set(sessions[fold != k])
    k, label = 1, head_label(train, "ctr")
    lr, _, _ = strong_fit(contract, train, train_rows[fold != k], val_rows, label, 3, "ctr")
    mine = train_rows[fold == k]
    np.testing.assert_allclose(
        fitted.out_of_fold[mine, 0], regression_scores(lr, train, contract, mine), atol=1e-5
    )
    # and they are not the served regression's own scores of the rows it was fitted on
    served = model.wide.weights.table.weight.detach()
    assert not torch.equal(served[:, 0], lr.weights.table.weight.detach()[:, 0])
    assert not (fitted.out_of_fold[val_rows] != 0).any()  # validation rows: the served one


def test_a_model_without_a_wide_term_is_refused(data):
    contract, train, _, _, _ = data
    model = build_model(ModelConfig(contract.to_dict()))
    with pytest.raises(ValueError, match="no wide term"):
        fit_wide(model, contract, train, np.arange(10), np.arange(10, 20), seed=0)
