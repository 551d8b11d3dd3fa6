"""The wide term of a wide & deep model is the strong reference itself: fit_wide fits each of
the towers' heads as `lr-strong` does and holds the result in the model, so that with the
towers silenced the model's logits are the regressions' logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.batches import iter_batches, split_sessions
from training.config import TrainConfig
from training.inputs import load_data
from training.model import ModelConfig, build_model
from training.optim import to_torch
from training.reference import STRONG, head_label, head_rows, strong_fit
from training.wide import fit_wide


@pytest.mark.parametrize("kind", ["esmm", "division"])
def test_the_wide_term_is_each_heads_fitted_regression(
    small_generated, tmp_path, monkeypatch, kind
):
    monkeypatch.setitem(STRONG, "l2", (1e-2, 1e-3, 1e-4))
    monkeypatch.setitem(STRONG, "max_evals", 30)
    cfg = TrainConfig(data=small_generated, out=tmp_path, seed=0)
    contract, train, test = load_data(cfg)
    train_rows, val_rows = split_sessions(train, cfg.val_fraction, cfg.seed)
    torch.manual_seed(0)
    model = build_model(ModelConfig(contract.to_dict(), kind=kind, wide=True))
    figures = fit_wide(model, contract, train, train_rows, val_rows, seed=0)
    assert list(figures) == list(model.wide_heads)
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
        assert figures[head]["l2"] == fig["l2"] and figures[head]["val_auc"] == fig["val_auc"]
        assert figures[head]["train_rows"] == len(fit_rows)
        with torch.no_grad():
            want = lr(**to_torch(b))
        got = logits.ctr if col == 0 else logits.cvr
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # CVR's regression reads the clicked rows; DIVISION's second head, CTCVR, every row
    second = figures[model.wide_heads[1]]["train_rows"]
    assert (second < len(train_rows)) == (kind == "esmm")


def test_a_model_without_a_wide_term_is_refused(small_generated, tmp_path):
    cfg = TrainConfig(data=small_generated, out=tmp_path, seed=0)
    contract, train, _ = load_data(cfg)
    model = build_model(ModelConfig(contract.to_dict()))
    with pytest.raises(ValueError, match="no wide term"):
        fit_wide(model, contract, train, np.arange(10), np.arange(10, 20), seed=0)
