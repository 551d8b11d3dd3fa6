"""Wide & deep (training/wide.py): the wide term is the strong reference itself, fitted per
head as `lr-strong` fits it, and each head's logit is then a blend of the towers' and the
regression's, fitted on validation rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.batches import iter_batches, split_sessions
from training.config import TrainConfig
from training.inputs import load_data
from training.model import ModelConfig, build_model
from training.optim import to_torch
from training.reference import STRONG, head_label, head_rows, regression_scores, strong_fit
from training.wide import blend, fit_wide, tower_logits


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


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y)))


@pytest.mark.parametrize(("kind", "wide"), [("esmm", "all"), ("division", "all"), ("base", "ctr")])
def test_the_wide_term_is_each_heads_regression_blended_on_validation(data, short_path, kind, wide):
    contract, train, test, train_rows, val_rows = data
    torch.manual_seed(0)
    model = build_model(ModelConfig(contract.to_dict(), kind=kind, wide=wide))
    before = tower_logits(model, train, contract, val_rows)
    figures = fit_wide(model, contract, train, train_rows, val_rows)
    assert list(figures) == list(model.wide_heads)
    assert model.wide.fitted
    assert len(model.wide_heads) == (1 if wide == "ctr" else 2)
    after = tower_logits(model, train, contract, val_rows)
    rows = np.arange(0, len(test), 7)
    (b,) = iter_batches(test, contract, rows, len(rows))
    for col, head in enumerate(model.wide_heads):
        fit_rows, val = head_rows(train, train_rows, head), head_rows(train, val_rows, head)
        label = head_label(train, head)
        lr, fig, _ = strong_fit(contract, train, fit_rows, val, label, head)
        got = figures[head]
        assert (got["l2"], got["val_auc"]) == (fig["l2"], fig["val_auc"])
        assert got["train_rows"] == len(fit_rows)
        # the blend: the towers' and the regression's logits on the head's validation rows
        towers, regression = (
            before[np.searchsorted(val_rows, val), col],
            regression_scores(lr, train, contract, val),
        )
        a, b_, c = blend(towers, regression, label[val])
        np.testing.assert_allclose(got["blend"], [a, b_, c], rtol=1e-6, atol=1e-9)
        mixed = after[np.searchsorted(val_rows, val), col]
        np.testing.assert_allclose(mixed, a * towers + b_ * regression + c, atol=1e-4)
        # no worse on those rows than either model alone: both are in the blend's family
        y = label[val].astype(np.float64)
        assert _log_loss(mixed, y) <= min(_log_loss(towers, y), _log_loss(regression, y)) + 1e-6
        # with the blend set to the regression alone, the model scores as it does
        with torch.no_grad():
            model.wide.blend[:, col] = torch.tensor([0.0, 1.0, 0.0])
            logits = model(**to_torch(b))
            want = lr(**to_torch(b))[:, 0]
        torch.testing.assert_close(
            logits.ctr if col == 0 else logits.cvr, want, atol=1e-5, rtol=1e-5
        )
    # CVR's regression reads the clicked rows; DIVISION's second head, CTCVR, every row
    if wide == "all":
        second = figures[model.wide_heads[1]]["train_rows"]
        assert (second < len(train_rows)) == (kind == "esmm")


def test_the_blend_finds_the_weights_that_made_the_labels():
    rng = np.random.default_rng(0)
    towers, regression = rng.normal(size=(2, 200_000))
    y = rng.random(200_000) < 1 / (1 + np.exp(-(1.5 * towers - 0.7 * regression + 0.4)))
    np.testing.assert_allclose(blend(towers, regression, y), [1.5, -0.7, 0.4], atol=0.03)


def test_a_model_without_a_wide_term_is_refused(data):
    contract, train, _, _, _ = data
    model = build_model(ModelConfig(contract.to_dict()))
    with pytest.raises(ValueError, match="no wide term"):
        fit_wide(model, contract, train, np.arange(10), np.arange(10, 20))


def test_the_regressions_fit_a_bounded_sample_of_the_training_rows(data, short_path, monkeypatch):
    """Above FIT_ROWS training rows, each head's regression is fitted on that many of them,
    evenly spaced (its sparse design is held in memory: about 5 GB a million rows), the same
    rows as a fit on that sample alone; the figures say so."""
    from training import wide

    contract, train, _, train_rows, val_rows = data
    monkeypatch.setattr(wide, "FIT_ROWS", 20_000)
    torch.manual_seed(0)
    model = build_model(ModelConfig(contract.to_dict(), kind="esmm", wide="ctr"))
    got = fit_wide(model, contract, train, train_rows, val_rows)["ctr"]
    assert got["train_rows"] == 20_000 and got["train_rows_sampled"]
    sample = train_rows[np.linspace(0, len(train_rows) - 1, 20_000).astype(np.int64)]
    label, val = head_label(train, "ctr"), head_rows(train, val_rows, "ctr")
    _, fig, _ = strong_fit(contract, train, sample, val, label, "ctr")
    assert (got["l2"], got["val_auc"]) == (fig["l2"], fig["val_auc"])
