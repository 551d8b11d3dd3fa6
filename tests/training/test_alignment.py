"""Aligned matches (`--interactions aligned`, training/alignment.py, training/interactions.py
AlignedMatches): a model that leaves Ali-CCP's combination fields out (what an id-only request
serves) learns, from the training rows that carry them, which list id stands for each item id,
and finds the candidate's in the user's cached list; `auto` chooses it for such a model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from features.contract import FeatureContract
from training import alignment
from training.batches import iter_batches, split_sessions
from training.config import POOLING, TrainConfig
from training.interactions import AlignedMatches, chosen_interactions
from training.optim import to_torch
from training.splits import load_split
from training.synthetic.writer import FIELD_BASE

COMBOS = ("508", "509", "702", "853")


@pytest.fixture(scope="module")
def full(small_generated):
    """The small set's training split read with every field, and its sessions' split."""
    contract = FeatureContract.default(**POOLING["weighted-mean"])
    split = load_split(small_generated, "train", contract, small_generated / ".encoded")
    train, val = split_sessions(split, 0.1, 0)
    return contract, split, train, val


def test_the_learned_alignment_is_the_generators_rule(full):
    """The generator names an attribute k as FIELD_BASE[field] + k on both sides (the ids
    differ by field, as real Ali-CCP's do); the rule is learned without being told so, and it
    holds on the validation rows the learning did not read."""
    contract, split, train, val = full
    found = alignment.learn_alignments(contract, split, train, val)
    assert [a.names for a in found] == [
        ("109_14", "206", "508"),
        ("110_14", "207", "509"),
        ("127_14", "216", "702"),
        ("150_14", "210", "853"),
    ]
    for a in found:
        lst, item, _ = a.names
        assert len(a.item_ids) > 100, a.names
        same = (a.item_ids - FIELD_BASE[item]) == (a.list_ids - FIELD_BASE[lst])
        assert same.mean() > 0.99, (a.names, same.mean())
        # on 100k rows: rare ids are not aligned (853 covers 0.77 of its rows, 508 0.99)
        assert a.holds and a.recall > 0.7 and a.precision > 0.99, a.figures()
        assert (a.units >= alignment.MIN_UNITS).all()


def test_a_field_that_counts_no_match_is_not_aligned(full):
    """Where the combination field is not there exactly when the list holds the item's
    attribute (here 508's column shuffled across rows), no alignment holds."""
    contract, split, train, val = full
    col = {f.name: c for f, c in contract.columns("item")}["508"]
    ids = np.array(split.item_ids)
    ids[:, col] = np.random.default_rng(0).permutation(ids[:, col])
    shuffled = dataclasses.replace(split, item_ids=ids)
    a = alignment.learn(contract, shuffled, train, ("109_14", "206", "508"))
    a.recall, a.precision, a.val_rows = alignment.agreement(contract, shuffled, val, a)
    assert not a.holds, a.figures()
    assert a.precision < 0.8, a.figures()


def test_a_field_written_with_zero_where_it_counts_no_match_learns_the_same_rule(full):
    """A file may write a single-valued combination field on every row, its value 0 where the
    list lacks the item's attribute: the rule reads it as the counts interaction does (there
    where its value is above 0), so it learns and checks the same rule as from a file that
    leaves the field out there."""
    contract, split, train, val = full
    col = {f.name: c for f, c in contract.columns("item")}["508"].start
    ids, vals = np.array(split.item_ids), np.array(split.item_vals)
    absent = ids[:, col] < 0
    assert 0.1 < absent.mean() < 0.9
    ids[absent, col], vals[absent, col] = ids[~absent, col][0], 0.0
    zeros = dataclasses.replace(split, item_ids=ids, item_vals=vals)
    names = ("109_14", "206", "508")
    a, b = (
        alignment.learn(contract, split, train, names),
        alignment.learn(contract, zeros, train, names),
    )
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.list_ids, b.list_ids)
    assert alignment.agreement(contract, split, val, a) == alignment.agreement(
        contract, zeros, val, b
    )


def test_auto_aligns_a_contract_that_leaves_the_combination_fields_out():
    fit, pooling = {"101": 10}, POOLING["weighted-mean"]
    c = FeatureContract.default(without=COMBOS, **pooling).fit_buckets(fit)
    choice, why = chosen_interactions("auto", True, c)
    assert choice == "aligned" and "508, 509, 702, 853 left out" in why
    assert [n for n, _ in AlignedMatches(c).names] == ["109_14", "110_14", "127_14", "150_14"]
    # one left out: the others' counts are read, as before
    one = FeatureContract.default(without=("508",), **pooling).fit_buckets(fit)
    assert chosen_interactions("auto", True, one)[0] == "counts"
    # a list left out too: nothing to align that field with
    lean = FeatureContract.default(without=(*COMBOS, "109_14")).fit_buckets(fit)
    assert [n for n, _ in AlignedMatches(lean).names] == ["110_14", "127_14", "150_14"]
    # with the fields too, on request (`auto` reads their counts)
    full = FeatureContract.default(**pooling).fit_buckets(fit)
    assert [n for n, _ in AlignedMatches(full).names] == ["109_14", "110_14", "127_14", "150_14"]
    lists = ("109_14", "110_14", "127_14", "150_14")
    with pytest.raises(ValueError, match="combination field"):
        AlignedMatches(FeatureContract.default(without=lists).fit_buckets(fit))
    # a spec has no combination fields: refused before any data is read
    for choice in ("aligned", "counts"):
        with pytest.raises(ValueError, match="give --data"):
            TrainConfig(spec=Path("spec.yaml"), out=Path("run"), interactions=choice)


def test_aligned_matches_refuse_what_the_search_cannot_hold_as_exact_matches_do():
    """One set of limits for every search over cached lists (training/interactions.py
    _search_limits): a list over 4096 columns is refused for aligned matches too, and `auto`
    then trains plain towers, saying why."""
    pooling = POOLING["weighted-mean"]
    long = FeatureContract.default(without=COMBOS, max_len={"150_14": 5000}, **pooling)
    long = long.fit_buckets({"101": 10})
    with pytest.raises(ValueError, match="aligned matches: lists of 4096 columns at most"):
        AlignedMatches(long)
    assert chosen_interactions("auto", True, long) == (
        "none",
        "aligned matches: lists of 4096 columns at most, not 150_14",
    )


def test_a_model_without_the_fields_finds_what_they_carried_and_exports(id_only, full):
    """Trained by default without the combination fields (tests/conftest.py), the model's
    matches are where the fields were: per pair, found where the row carries the field (the
    rows of the test split, which neither the alignment nor the towers read); the export
    scores as the checkpoint does, and the alignment's figures are in the run's metrics."""
    from training.export import load_run
    from training.inputs import load_data

    cfg, metrics, folder = id_only
    assert set(metrics["alignment"]) == set(COMBOS)
    assert all(f["holds"] for f in metrics["alignment"].values()), metrics["alignment"]
    model, _, ckpt = load_run(cfg.out)
    assert ckpt["model_args"]["interactions"] == "aligned"
    inter = model.inter[0]
    assert isinstance(inter, AlignedMatches) and (inter.align > 0).sum() > 1000

    c, _, test = load_data(cfg)
    rows = np.arange(0, len(test), 7)
    (b,) = iter_batches(test, c, rows, len(rows))
    t = to_torch(b)
    with torch.no_grad():
        part = inter.user_part(model.embeddings[0], t["user_ids"], t["user_w"], None)
        found = (inter.weights(part, t["user_index"], t["item_ids"]) > 0).numpy()
    contract, _, _, _ = full
    every = load_split(cfg.data, "test", contract, cfg.data / ".encoded")
    cols = {f.name: s for f, s in contract.columns("item")}
    for p, combo in enumerate(COMBOS):
        carried = (np.asarray(every.item_ids)[rows][:, cols[combo]] >= 0).any(1)
        # found only where the field was (two ids sharing a hashed row may add a match), and
        # on most of its rows (the 100k set leaves rare ids unaligned)
        precision, recall = carried[found[:, p]].mean(), found[carried, p].mean()
        assert precision > 0.95 and recall > 0.7, (combo, precision, recall)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["interactions"] == "aligned"
    assert manifest["parity"]["max_abs_error"] < 1e-5


def test_auto_leaves_the_fields_out_only_where_every_rule_rebuilds_its_field(
    small_generated, tmp_path, monkeypatch
):
    """On Ali-CCP data that carries the combination fields, `auto` learns their rules first:
    where each holds and rebuilds at least MIN_RECALL of its field's validation rows, the run
    leaves the fields out (its config says so, for the checkpoint) and reads the data again
    without them; where one does not, it reads their counts. (The small set's 853 rule covers
    about 0.77 of its rows, between the two bars set here.)"""
    from training.prepare import read_and_choose

    cfg = TrainConfig(data=small_generated, out=tmp_path, seed=0)
    monkeypatch.setattr(alignment, "MIN_RECALL", 0.5)
    d = read_and_choose(cfg)
    assert d.interactions == "aligned" and d.cfg.without == COMBOS, d.why
    assert "508, 509, 702, 853 left out" in d.why and "--interactions counts" in d.why
    assert not {f.name for f in d.contract.fields} & set(COMBOS)
    assert [a.names[2] for a in d.alignments if a.holds] == list(COMBOS)
    assert len(d.train_rows) + len(d.val_rows) == len(d.train_split)

    monkeypatch.setattr(alignment, "MIN_RECALL", 0.99)
    d = read_and_choose(cfg)
    assert d.interactions == "counts" and d.cfg.without == (), d.why
    assert "853's rule rebuilds 0." in d.why and "below 0.99" in d.why
    assert set(COMBOS) <= {f.name for f in d.contract.fields}
    # asked for by name, counts are read without learning any rule
    named = read_and_choose(dataclasses.replace(cfg, interactions="counts"))
    assert named.interactions == "counts" and named.alignments is None


def test_the_fields_are_left_out_only_when_every_one_is_rebuilt():
    def rule(combo, recall, precision=1.0, ids=5):
        return alignment.Alignment(
            ("l", "i", combo),
            np.arange(ids),
            np.arange(ids),
            np.full(ids, 3),
            recall,
            precision,
            100,
        )

    good = [rule(c, 0.95) for c in COMBOS]
    assert alignment.rebuilds(good, list(COMBOS))[0]
    assert alignment.rebuilds(good, ["508"])[0]  # the others are not read: nothing to rebuild
    low = [*good[:3], rule("853", alignment.MIN_RECALL - 0.01)]
    ok, why = alignment.rebuilds(low, list(COMBOS))
    assert not ok and why.startswith("853's rule rebuilds")
    wrong = [rule("508", 0.95, precision=0.5), *good[1:]]
    assert alignment.rebuilds(wrong, list(COMBOS)) == (False, "508's rule does not hold")
    empty = [rule("508", 0.0, ids=0), *good[1:]]
    assert not alignment.rebuilds(empty, list(COMBOS))[0]
    assert not alignment.rebuilds(good[1:], list(COMBOS))[0]  # 508 never learned
    assert alignment.rebuilds(good, []) == (False, "no combination field is read")


def test_where_no_rule_holds_auto_trains_plain_towers_and_a_named_choice_stops(
    small_generated, tmp_path, monkeypatch
):
    """Without the fields and with no rule passing the check (the precision bar set out of
    reach here), `auto` falls back to plain towers and says why; `--interactions aligned` by
    name stops with each field's figures instead of training something else."""
    from training.prepare import read_and_choose

    monkeypatch.setattr(alignment, "MIN_PRECISION", 1.01)
    cfg = TrainConfig(data=small_generated, out=tmp_path, seed=0, without=COMBOS)
    d = read_and_choose(cfg)
    assert d.interactions == "none" and "no combination field's alignment holds" in d.why
    assert [a.names[2] for a in d.alignments] == list(COMBOS)  # kept for metrics.json
    with pytest.raises(SystemExit, match=r"no alignment holds \(508: recall 0\.\d+"):
        read_and_choose(dataclasses.replace(cfg, interactions="aligned"))
    # with the fields in the data, auto reads their counts
    full = read_and_choose(dataclasses.replace(cfg, without=()))
    assert full.interactions == "counts" and "508's rule does not hold" in full.why
