"""Exact user x item matches (`--interactions match`, training/interactions.py MatchCounts): the
weight a user's list puts on the candidate's own id, found in the model by a binary search over
the list's ids held in the user representation, and read by the wide term's regression too."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from features import spec as S
from features.contract import FeatureContract
from training.batches import iter_batches, split_sessions
from training.config import TrainConfig
from training.inputs import load_data
from training.interactions import MATCH_OCTAVES, MatchCounts, chosen_interactions
from training.model import ModelConfig, build_model
from training.optim import to_torch
from training.reference import STRONG, head_label, head_rows, regression_scores, strong_fit
from training.wide import fit_wide, tower_logits, wide_inputs

# shared groups with a single-valued item field (category) and a multi-valued one (intents);
# the shops list shares with nothing
SPEC = """\
keys: {user: user_id, item: item_id, request: request_id}
labels: {click: click, conversion: conversion}
tables:
  events: {train: events_train.parquet, test: events_test.parquet}
features:
  - {name: user_id, side: user, kind: id}
  - {name: recent_categories, side: user, kind: ids, embedding: category, max_len: 23}
  - {name: recent_shops, side: user, kind: ids, max_len: 5}
  - {name: recent_intents, side: user, kind: ids, embedding: intent, max_len: 9}
  - {name: item_id, side: item, kind: id}
  - {name: category, side: item, kind: id, embedding: category}
  - {name: intents, side: item, kind: ids, embedding: intent, max_len: 4}
"""


@pytest.fixture(scope="module")
def contract() -> FeatureContract:
    tables = ("user_id", "category", "recent_shops", "intent", "item_id")
    c = FeatureContract.from_spec(S.loads(SPEC), {}).fit_buckets({t: 64 for t in tables})
    # the category table's buckets from 8 up were seen once: rare, one shared row for them all
    counts = {f.name: np.full(f.buckets, 5) for f in c.fields}
    for name in ("recent_categories", "category"):
        counts[name][8:] = 0
    return c.with_rare(counts, min_count=2)


def _rows(c: FeatureContract, table: str) -> tuple[np.ndarray, int]:
    """A few hashed rows of a table (drawn from, so that ids repeat and match) and its shared
    rare row (or -1)."""
    f = next(f for f in c.fields if f.table == table)
    return f.offset + np.arange(6), (f.offset + f.buckets if f.rare else -1)


def test_a_match_is_the_lists_summed_weight_on_each_of_the_items_own_ids(contract):
    """Against a by-hand count: repeated members sum, zero weights and padding count nothing,
    the rare ids' shared row (many ids read it) never matches, a multi-valued field sums over
    its ids; the features a one-hot of the weight's octave a pair; 2L floats a list in the
    user part."""
    c, rng = contract, np.random.default_rng(0)
    m = build_model(ModelConfig(c.to_dict(), interactions="match")).eval()
    match = m.inter[0]
    ucols = {f.name: cols for f, cols in c.columns("user")}
    icols = {f.name: cols for f, cols in c.columns("item")}
    users, n = 7, 300
    user_ids = np.zeros((users, c.width("user")), np.int64)
    user_w = np.zeros((users, c.width("user")), np.float32)
    item_ids = np.zeros((n, c.width("item")), np.int64)
    pairs = [("recent_categories", "category", "category"), ("recent_intents", "intents", "intent")]
    for lst, _, table in pairs:
        pool, rare = _rows(c, table)
        draw = np.r_[pool, [rare] if rare > 0 else [], [0]]  # 0: padding
        cols = ucols[lst]
        length = cols.stop - cols.start
        user_ids[:, cols] = rng.choice(draw, (users, length))
        user_w[:, cols] = rng.choice([0.0, 0.5, 1.0, 3.0], (users, length))
        user_w[:, cols] *= user_ids[:, cols] > 0
    for _, field, table in pairs:
        pool, rare = _rows(c, table)
        cols = icols[field]
        draw = np.r_[pool, pool + 30, [rare] if rare > 0 else [], [0]]  # + 30: in no list
        item_ids[:, cols] = rng.choice(draw, (n, cols.stop - cols.start))
    user_index = rng.integers(0, users, n)
    index, items = torch.from_numpy(user_index), torch.from_numpy(item_ids)
    with torch.no_grad():
        part = match.user_part(None, torch.from_numpy(user_ids), torch.from_numpy(user_w), None)
        got = match.weights(part, index, items)
        features = match.features(part, index, None, items)
        wide = match.wide_features(features)
    assert got.shape == (n, len(pairs))
    assert match.user_width == sum(2 * (ucols[lst].stop - ucols[lst].start) for lst, *_ in pairs)
    assert part.shape == (users, match.user_width)
    # the towers' features: (found, weight) a pair; the regression's: per pair, the octave of
    # the weight, one-hot (none found: all zeros)
    assert features.shape == (n, 2 * len(pairs)) == (n, match.width)
    torch.testing.assert_close(features[:, 1::2], got)
    assert torch.equal(features[:, 0::2], (got > 0).float())
    octaves = len(MATCH_OCTAVES) + 1
    assert wide.shape == (n, octaves * len(pairs)) == (n, match.wide_width)
    for p in range(len(pairs)):
        one = wide[:, p * octaves : (p + 1) * octaves]
        w = got[:, p]
        assert torch.equal(one.sum(1), (w > 0).float())
        edges = torch.tensor((0.0, *MATCH_OCTAVES, float("inf")))
        hit = one.argmax(1)
        ok = w > 0
        assert (w[ok] > edges[hit[ok]]).all() and (w[ok] <= edges[hit[ok] + 1]).all()
    seen = {"found": 0, "rare": 0}
    for p, (lst, field, table) in enumerate(pairs):
        rare = _rows(c, table)[1]
        for r in range(n):
            ids, w = user_ids[user_index[r], ucols[lst]], user_w[user_index[r], ucols[lst]]
            keys = item_ids[r, icols[field]]
            want = sum(w[ids == k].sum() for k in keys if k > 0 and k != rare)
            assert got[r, p].item() == pytest.approx(want, abs=1e-6)
            seen["found"] += want > 0
            seen["rare"] += rare > 0 and (keys == rare).any() and (ids == rare).any()
    assert seen["found"] > n / 2 and seen["rare"] > 10  # the cases were there to be counted


def test_full_lists_keep_their_search_inside_their_own_ids(contract):
    """Lists with no padding, of different lengths (23 and 9 columns, one search of the longer's
    steps): a candidate id above every member of the shorter list, at its last member, below
    its first, and one between two members. Each list's summed weights follow its keys in the
    user part and are below every id, so a read past a list's last key would count them as
    keys below the query."""
    c = contract
    m = build_model(ModelConfig(c.to_dict(), interactions="match")).eval()
    match = m.inter[0]
    ucols = {f.name: cols for f, cols in c.columns("user")}
    icols = {f.name: cols for f, cols in c.columns("item")}
    user_ids = np.zeros((1, c.width("user")), np.int64)
    user_w = np.zeros((1, c.width("user")), np.float32)
    intents = next(f for f in c.fields if f.name == "intents").offset + np.arange(0, 18, 2)
    cats = next(f for f in c.fields if f.name == "category").offset + np.arange(1, 8)
    user_ids[0, ucols["recent_intents"]] = intents  # 9 distinct even rows: a full list
    user_w[0, ucols["recent_intents"]] = 0.5
    user_ids[0, ucols["recent_categories"]] = np.resize(cats, 23)  # full, with repeats
    user_w[0, ucols["recent_categories"]] = 1.0
    # the intents list: above all, its last, its first, between two, below all
    queries = [intents[-1] + 2, intents[-1], intents[0], intents[3] + 1, intents[0] - 1]
    item_ids = np.zeros((len(queries), c.width("item")), np.int64)
    item_ids[:, icols["intents"].start] = queries
    item_ids[:, icols["category"].start] = [cats[-1], cats[0], cats[3], cats[-1] + 1, cats[0] - 1]
    with torch.no_grad():
        part = match.user_part(None, torch.from_numpy(user_ids), torch.from_numpy(user_w), None)
        got = match.weights(
            part, torch.zeros(len(queries), dtype=torch.int64), torch.from_numpy(item_ids)
        )
    counts = np.bincount(np.arange(23) % 7, minlength=7)  # each category's members
    want_cat = [counts[6], counts[0], counts[3], 0, 0]
    want_intent = [0.0, 0.5, 0.5, 0.0, 0.0]
    np.testing.assert_array_equal(got[:, 0].numpy(), np.float32(want_cat))
    np.testing.assert_array_equal(got[:, 1].numpy(), np.float32(want_intent))


def test_the_matches_rebuild_the_specs_count_in_crosses(spec_generated, tmp_path):
    """On the generator's named tables, their lists summed (`pooling: sum`: the weights the
    model reads are the raw counts, not shares of the list): each cross's numeric bucket of the
    model's match equals the cross column the tables reader computed from raw ids, on all rows
    but those where two ids share a hashed row (where it is higher)."""
    text = re.sub(
        r"(name: recent_\w+,.*max_len: \d+)\}", r"\1, pooling: sum}", spec_generated.read_text()
    )
    assert text.count("pooling: sum") == 4
    summed = spec_generated.with_name("spec-summed.yaml")  # beside it: its tables' paths hold
    summed.write_text(text)
    c, train, _ = load_data(TrainConfig(spec=summed, out=tmp_path))
    m = build_model(ModelConfig(c.to_dict(), interactions="match")).eval()
    match, (b,) = m.inter[0], iter_batches(train, c, np.arange(20_000), 20_000)
    x = to_torch(b)
    with torch.no_grad():
        part = match.user_part(None, x["user_ids"], x["user_w"], None)
        got = match.weights(part, x["user_index"], x["item_ids"]).numpy()
    icols = {f.name: cols for f, cols in c.columns("item")}
    checked = 0
    for p, pair in enumerate(match.names):
        cross = next(f for f in c.fields if f.cross == pair)
        want = b.item_ids[:, icols[cross.name].start]
        rebuilt = c.numeric_rows(cross, got[:, p])
        # a hashed row two ids share can only add a match: 0.5-4.6% of rows on these tables
        assert (rebuilt >= want).all() and (rebuilt == want).mean() > 0.95, cross.name
        checked += 1
    assert checked == 4  # categories, shops, brands, intents


def test_exact_matches_need_a_shared_group_and_ids_a_float_holds(contract):
    plain = FeatureContract.default().fit_buckets({"101": 10})
    with pytest.raises(ValueError, match="needs a user list and an item field in one embedding"):
        MatchCounts(plain)
    big = FeatureContract.from_spec(S.loads(SPEC), {}).fit_buckets(
        {"user_id": 1 << 24}, min_buckets=16, max_buckets=1 << 25
    )
    with pytest.raises(ValueError, match="exact below 2\\^24 rows"):
        MatchCounts(big)


def test_the_wide_regression_reads_the_matches(spec_generated, tmp_path, monkeypatch):
    """With exact matches the wide term's regression has one weight a match feature and head,
    fitted with the hashed features' as strong_fit fits them; the model's regression scores as
    that fit does."""
    monkeypatch.setitem(STRONG, "l2", (1e-2, 1e-3))
    monkeypatch.setitem(STRONG, "max_evals", 30)
    cfg = TrainConfig(spec=spec_generated, out=tmp_path, seed=0)
    c, train, test = load_data(cfg)
    train_rows, val_rows = split_sessions(train, cfg.val_fraction, cfg.seed)
    torch.manual_seed(0)
    model = build_model(ModelConfig(c.to_dict(), interactions="match", wide="all"))
    assert model.wide.regression.dense.shape == (model.inter[0].wide_width, 2)
    fit_wide(model, c, train, train_rows, val_rows)
    assert model.wide.regression.dense.abs().sum() > 0

    head = "ctr"
    rows, val = head_rows(train, train_rows, head), head_rows(train, val_rows, head)
    dense = (wide_inputs(model, train, c, rows), wide_inputs(model, train, c, val))
    assert dense[0].shape == (len(rows), model.inter[0].wide_width)
    lr, _, _ = strong_fit(c, train, rows, val, head_label(train, head), head, dense)
    torch.testing.assert_close(model.wide.regression.dense[:, 0], lr.dense[:, 0])
    test_rows = np.arange(0, len(test), 5)
    with torch.no_grad():
        model.wide.blend[:, 0] = torch.tensor([0.0, 1.0, 0.0])
    got = tower_logits(model, test, c, test_rows)[:, 0]
    want = regression_scores(lr, test, c, test_rows, wide_inputs(model, test, c, test_rows))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_two_tables_cache_and_search_the_lists_once(contract):
    """A kind with a table a tower (esmm-ns) holds the lists' ids once in the user
    representation and scores as when its second tower's matches are its own (the same ids,
    the same floats); each tower keeps its own normalisation."""
    m = build_model(ModelConfig(c_dict := contract.to_dict(), kind="esmm-ns", interactions="match"))
    one = build_model(ModelConfig(c_dict, kind="esmm", interactions="match"))
    assert len(m.inter) == 2 and m.inter[0].norm is not m.inter[1].norm
    assert m.repr_dim == one.repr_dim == 2 * m.cfg.hidden[0] + m.inter[0].user_width
    x = {k: torch.from_numpy(v) for k, v in _case(contract).items()}
    m.eval()
    with torch.no_grad():
        r = m.user_repr(x["user_ids"], x["user_w"])
        got = m.score(r, x["user_index"], x["item_ids"], x["item_w"])
        part = r[:, 2 * m.cfg.hidden[0] :]
        f = m.inter[0].features(part, x["user_index"], None, x["item_ids"])
        assert f[:, 1::2].sum() > 0  # the case has matches
        item = m.embeddings[1](x["item_ids"], x["item_w"], "item")
        h = m.cfg.hidden[0]
        cvr = m.cvr(r[x["user_index"], h : 2 * h], torch.cat([item, m.inter[1].norm(f)], 1))
    torch.testing.assert_close(got.cvr, cvr)


def _case(c: FeatureContract) -> dict[str, np.ndarray]:
    """Two users whose category lists hold the items' categories."""
    rows, _ = _rows(c, "category")
    ucols = {f.name: cols for f, cols in c.columns("user")}["recent_categories"]
    icols = {f.name: cols for f, cols in c.columns("item")}["category"]
    user_ids = np.zeros((2, c.width("user")), np.int64)
    user_w = np.zeros((2, c.width("user")), np.float32)
    user_ids[:, ucols.start : ucols.start + 3] = rows[:3]
    user_w[:, ucols.start : ucols.start + 3] = [[1, 2, 3], [3, 0, 1]]
    item_ids = np.zeros((6, c.width("item")), np.int64)
    item_ids[:, icols.start] = rows[[0, 1, 2, 3, 0, 1]]
    return {
        "user_ids": user_ids,
        "user_w": user_w,
        "user_index": np.array([0, 0, 0, 1, 1, 1]),
        "item_ids": item_ids,
        "item_w": (item_ids > 0).astype(np.float32),
    }


def _contract_of(spec: str) -> FeatureContract:
    return FeatureContract.from_spec(S.loads(spec), {})


CROSS = "  - {{name: {0}_n, side: cross, count_in: {{list: {1}, key: {0}}}}}\n"


def test_auto_chooses_matches_where_a_shared_pair_has_no_cross():
    """Training's default, `--interactions auto`: exact matches over a spec whose shared groups
    no cross counts, none where its crosses count every shared pair (they carry what matches
    would), none without a shared group or towers; an explicit choice stands."""
    got = chosen_interactions("auto", True, _contract_of(SPEC))
    assert got[0] == "match"
    assert "recent_categories x category" in got[1] and "recent_intents x intents" in got[1]
    one = SPEC + CROSS.format("category", "recent_categories")
    choice, why = chosen_interactions("auto", True, _contract_of(one))
    assert choice == "match" and "recent_categories" not in why and "recent_intents" in why
    both = one + CROSS.format("intents", "recent_intents")
    assert chosen_interactions("auto", True, _contract_of(both))[0] == "none"
    assert chosen_interactions("auto", False, _contract_of(SPEC))[0] == "none"
    plain = re.sub(r", embedding: \w+", "", SPEC)
    assert chosen_interactions("auto", True, _contract_of(plain))[0] == "none"
    big = _contract_of(SPEC).fit_buckets({"user_id": 1 << 24}, min_buckets=16, max_buckets=1 << 25)
    assert chosen_interactions("auto", True, big) == (
        "none",
        f"exact matches hold ids as float32, exact below 2^24 rows, not {big.num_rows}",
    )
    assert chosen_interactions("attn", True, _contract_of(SPEC)) == ("attn", "as given")
    assert chosen_interactions("none", True, _contract_of(SPEC)) == ("none", "as given")
    with pytest.raises(ValueError, match="concrete"):
        ModelConfig(_contract_of(SPEC).to_dict(), interactions="auto")


def test_training_by_default_matches_a_shops_lists_its_crosses_do_not_count(tmp_path, shop_model):
    """`ranker train`'s default made concrete in the run: a shop's spec whose one cross counts
    its one shared pair trains plain towers (the exported manifest says so); the same spec
    without the cross trains exact matches, and its checkpoint holds the concrete choice."""
    import json

    from support import write_shop

    from training.train import TrainConfig, train

    assert json.loads((shop_model / "manifest.json").read_text())["model"]["interactions"] == "none"
    (tmp_path / "shop").mkdir()
    spec = write_shop(tmp_path / "shop")
    text = spec.read_text()
    spec.write_text("".join(line for line in text.splitlines(True) if "side: cross" not in line))
    run = tmp_path / "run"
    train(TrainConfig(spec=spec, out=run, model="esmm", epochs=1, seed=0, reference=False))
    args = torch.load(run / "checkpoint.pt", weights_only=False)["model_args"]
    assert args["interactions"] == "match"
