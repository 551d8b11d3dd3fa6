"""Combination counts (`--interactions counts`, training/interactions.py CombinationCounts):
the counts Ali-CCP's combination fields carry as their values, read by the towers and, as
octaves, by the wide term's regression and the strong reference; `auto` chooses them on
Ali-CCP data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from features.contract import FeatureContract
from training.batches import iter_batches
from training.config import POOLING
from training.interactions import COUNT_OCTAVES, CombinationCounts, chosen_interactions
from training.optim import to_torch
from training.reference import STRONG, count_inputs


def _contract(pooling: str = "weighted-mean", without=()) -> FeatureContract:
    return FeatureContract.default(**POOLING[pooling], without=without).fit_buckets({"101": 10})


def _items(c: FeatureContract, entities: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = [c.encode_entity("item", e) for e in entities]
    ids, w = c.hash_side("item", np.stack([r[0] for r in raw]), np.stack([r[1] for r in raw]))
    return torch.from_numpy(ids), torch.from_numpy(w)


def test_a_count_is_a_single_fields_value_and_a_lists_number_of_ids():
    """508, 509 and 702 count by their values (absent, zero or negative: no count), 853 by its
    ids; (found, count) a field for the towers, the count's octave for a regression."""
    c = _contract()
    counts = CombinationCounts(c)
    assert counts.names == ["508", "509", "702", "853"] and counts.user_width == 0
    ids, w = _items(
        c,
        [
            {"205": ([1], [1.0]), "508": ([11], [3.0]), "853": ([4, 5], [2.0, 7.0])},
            {"508": ([12], [2.0]), "509": ([13], [-1.0]), "702": ([14], [2000.0])},
            {"508": ([12], [1e9]), "509": ([13], [0.0])},
            {"206": ([2], [1.0])},
        ],
    )
    got = counts.counts(ids, w)
    want = [[3, 0, 0, 2], [2, 0, 2000, 0], [2**20, 0, 0, 0], [0, 0, 0, 0]]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    f = counts.features(None, torch.zeros(4, dtype=torch.int64), None, ids, w)
    torch.testing.assert_close(f[:, 0::2], (got > 0).float())
    torch.testing.assert_close(f[:, 1::2], got)
    octaves = counts.wide_features(f).unflatten(1, (4, -1))
    assert octaves.shape[2] == len(COUNT_OCTAVES) + 1
    # (0, 1], (1, 2], (2, 4], ...: 3 in the third, 2 (on an edge) in the second, 2000 and the
    # capped 2^20 above the last edge, nothing found: all zeros
    assert octaves.sum(2).tolist() == (got > 0).float().tolist()
    assert octaves[0, 0].argmax() == 2 and octaves[0, 3].argmax() == 1
    assert octaves[1, 0].argmax() == 1 and octaves[1, 2].argmax() == len(COUNT_OCTAVES)
    assert octaves[2, 0].argmax() == len(COUNT_OCTAVES)
    # the towers read log1p of (found, count), normalised: finite for every count
    counts.eval()
    assert torch.isfinite(counts.tower_input(f)).all()


def test_unweighted_pooling_keeps_no_single_values_and_lists_still_count():
    c = _contract("mean")
    ids, w = _items(c, [{"508": ([11], [3.0]), "853": ([4, 5, 6], [1.0, 1.0, 1.0])}])
    torch.testing.assert_close(CombinationCounts(c).counts(ids, w), torch.tensor([[1.0, 0, 0, 3]]))


def test_auto_reads_the_counts_on_aliccp_data_that_weighs_them():
    choice, why = chosen_interactions("auto", True, _contract())
    assert choice == "counts" and "508, 509, 702, 853" in why
    assert chosen_interactions("auto", True, _contract(without=("508", "853"))) == (
        "counts",
        "the counts of combination fields 509, 702",
    )
    choice, why = chosen_interactions("auto", True, _contract("mean"))
    assert choice == "none" and "unweighted" in why
    assert chosen_interactions("auto", False, _contract())[0] == "none"
    combos = ("508", "509", "702", "853")
    # without them: rebuilt from the ids they combine (tests/training/test_alignment.py)
    assert chosen_interactions("auto", True, _contract(without=combos))[0] == "aligned"
    with pytest.raises(ValueError, match="combination fields"):
        CombinationCounts(_contract(without=combos))


def test_training_reads_the_counts_by_default_and_exports_them(
    small_generated, tmp_path, monkeypatch
):
    """`ranker train --data` on Ali-CCP files trains combination counts by default; the wide
    regression reads their octaves (a weight each and head, fitted), the strong reference's
    inputs are the same octaves, and the exported graphs score as the checkpoint does (the
    export's parity check, on rows whose counts vary)."""
    from training.export import export, load_run
    from training.inputs import load_data
    from training.train import TrainConfig, train

    monkeypatch.setitem(STRONG, "l2", (1e-2, 1e-3))
    monkeypatch.setitem(STRONG, "max_evals", 30)
    cfg = TrainConfig(
        data=small_generated, out=tmp_path / "run", epochs=1, wide="all", reference=False
    )
    train(cfg)
    model, _, ckpt = load_run(cfg.out)
    assert ckpt["model_args"]["interactions"] == "counts"
    counts = model.inter[0]
    assert isinstance(counts, CombinationCounts)
    assert model.wide.regression.dense.shape == (counts.wide_width, 2)
    assert model.wide.regression.dense.abs().sum() > 0

    c, split, _ = load_data(cfg)
    rows = np.arange(0, len(split), 97)
    got = count_inputs(c, split, rows)
    (b,) = iter_batches(split, c, rows, len(rows))
    t = to_torch(b)
    want = counts.wide_features(counts.features(None, None, None, t["item_ids"], t["item_w"]))
    np.testing.assert_array_equal(got, want.numpy())
    col = {f.name: cols for f, cols in c.columns("item")}["508"].start
    values = np.asarray(split.item_vals)[rows, col]
    present = np.asarray(split.item_ids)[rows, col] >= 0
    assert len(set(values[present].tolist())) > 3  # the set's counts vary
    np.testing.assert_array_equal(got.reshape(len(rows), 4, -1)[:, 0].sum(1), present)

    report = export(cfg.out, tmp_path / "model")
    assert report["parity"]["max_abs_error"] < 1e-5
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["model"]["interactions"] == "counts"
