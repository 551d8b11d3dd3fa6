import json
import subprocess
import sys

import numpy as np
import pytest

from features.contract import ALL_FIELDS, PAD_ROW, FeatureContract, truncate


def fitted(**kw) -> FeatureContract:
    return FeatureContract.default(**kw).fit_buckets({name: 1000 for name in ALL_FIELDS})


def test_contract_imports_neither_torch_nor_web_stack():
    code = (
        "import sys, features, features.calibration, features.parity, training.splits, "
        "training.metrics; "
        "bad = [m for m in ('torch', 'fastapi', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ali_ccp_fields_and_sides():
    c = FeatureContract.default()
    assert len(c.fields) == 23
    assert {f.name for f in c.side_fields("user")} >= {"101", "109_14", "150_14"}
    assert {f.name for f in c.side_fields("item")} >= {"205", "508", "853", "301"}
    assert c.width("user") == sum(f.max_len for f in c.side_fields("user"))


def test_fit_buckets_powers_of_two_and_contiguous_offsets():
    c = FeatureContract.default().fit_buckets({"205": 5000, "124": 3}, max_buckets=1 << 12)
    f205, f124 = c.field("205"), c.field("124")
    assert f205.buckets == 1 << 12  # 5000 / 0.25 capped
    assert f124.buckets == 16  # the floor
    end = 1
    for f in c.fields:
        assert f.offset == end and f.buckets & (f.buckets - 1) == 0
        end += f.buckets
    assert c.num_rows == end


def test_hash_side_maps_into_the_field_range_and_pads_with_row_zero():
    c = fitted()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 1 << 62, size=(50, c.width("item")))
    raw[:, ::3] = -1
    vals = rng.uniform(1, 3, size=raw.shape).astype(np.float32)
    rows, w = c.hash_side("item", raw, vals)
    for f, cols in c.columns("item"):
        present = raw[:, cols] >= 0
        r = rows[:, cols]
        assert np.all((r[present] >= f.offset) & (r[present] < f.offset + f.buckets))
        assert np.all(r[~present] == PAD_ROW)
    assert np.array_equal(w, (raw >= 0).astype(np.float32))  # plain sum pooling
    rows2, _ = c.hash_side("item", raw, vals)
    assert np.array_equal(rows, rows2)


def test_weighted_pooling_uses_the_values():
    c = fitted(weighted=True)
    raw = np.array([[5] + [-1] * (c.width("item") - 1)])
    vals = np.full(raw.shape, 2.5, dtype=np.float32)
    _, w = c.hash_side("item", raw, vals)
    assert w[0, 0] == 2.5 and not w[0, 1:].any()


def test_same_id_in_different_fields_lands_in_different_rows():
    c = fitted()
    raw = np.full((1, c.width("item")), 42)
    rows, _ = c.hash_side("item", raw, np.ones(raw.shape, np.float32))
    firsts = [rows[0, cols.start] for _, cols in c.columns("item")]
    assert len(set(firsts)) == len(firsts)


def test_truncate_keeps_the_highest_values_in_order():
    ids, vals = truncate([1, 2, 3, 4, 5], [1.0, 5.0, 2.0, 5.0, 0.5], 3)
    assert ids.tolist() == [2, 3, 4] and vals.tolist() == [5.0, 2.0, 5.0]
    with pytest.raises(ValueError):
        truncate([1, 2], [1.0], 3)


def test_encode_entity_pads_truncates_and_refuses_other_side_fields():
    c = FeatureContract.default(max_len={"210": 2})
    ids, vals = c.encode_entity("item", {"205": ([9], [1.0]), "210": ([1, 2, 3], [1, 3, 2])})
    cols = dict((f.name, s) for f, s in c.columns("item"))
    assert ids[cols["205"]].tolist() == [9]
    assert ids[cols["210"]].tolist() == [2, 3] and vals[cols["210"]].tolist() == [3, 2]
    assert (ids[cols["216"]] == -1).all()
    with pytest.raises(KeyError, match="101"):
        c.encode_entity("item", {"101": ([1], [1.0])})


def test_round_trip_and_unfitted_refusal():
    c = fitted(max_len={"110_14": 10}, weighted=True, seed=3)
    assert FeatureContract.from_dict(c.to_dict()) == c
    with pytest.raises(RuntimeError, match="bucket"):
        FeatureContract.default().hash_side("user", np.zeros((1, 1)), np.zeros((1, 1)))
    with pytest.raises(ValueError):
        FeatureContract.from_dict({**c.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="fields of version 1"):  # says 2, uses nothing of it
        FeatureContract.from_dict({**c.to_dict(), "version": 2})


def test_side_rows_are_contiguous_and_cover_the_table():
    c = fitted()
    u_lo, u_hi = c.side_rows("user")
    i_lo, i_hi = c.side_rows("item")
    assert (u_lo, u_hi, i_lo, i_hi) == (1, i_lo, u_hi, c.num_rows)


def test_a_contract_may_leave_fields_out_but_never_a_store_key():
    c = FeatureContract.default(without=("508", "509", "702", "853"))
    assert {f.name for f in c.fields}.isdisjoint({"508", "509", "702", "853"})
    assert c.width("item") == FeatureContract.default().width("item") - 3 - 8
    for key in ("101", "205"):
        with pytest.raises(ValueError, match="store key"):
            FeatureContract.default(without=(key,))
    with pytest.raises(KeyError):
        FeatureContract.default(without=("999",))


def _counts(c: FeatureContract, side: str, column_ids: dict[str, list[int]], n: int) -> dict:
    ids = np.full((n, c.width(side)), -1, np.int64)
    for f, cols in c.columns(side):
        if f.name in column_ids:
            ids[:, cols.start] = column_ids[f.name]
    return c.bucket_counts(side, ids)


def test_rare_ids_and_unseen_ids_share_one_row_per_field():
    c = fitted()
    counts = {
        **_counts(c, "user", {"101": [1, 1, 1, 2, 2, 3]}, 6),
        **_counts(c, "item", {"205": [7, 7, 8, 9, 9, 9]}, 6),
    }
    r = c.with_rare(counts, min_count=2)
    assert r.version == 2 and r.num_rows == c.num_rows + len(c.fields)
    lo, hi = r.side_rows("user")
    assert (lo, hi) == (1, r.side_rows("item")[0])  # still contiguous, user fields first

    def row(side: str, field: str, raw: int) -> int:
        ids = np.full((1, r.width(side)), -1, np.int64)
        ids[0, dict((f.name, s) for f, s in r.columns(side))[field].start] = raw
        out, _ = r.hash_side(side, ids, np.ones(ids.shape, np.float32))
        return int(out[out != PAD_ROW][0])

    f101, f205 = r.field("101"), r.field("205")
    shared_101, shared_205 = f101.offset + f101.buckets, f205.offset + f205.buckets
    assert row("user", "101", 1) != shared_101 and row("user", "101", 2) != shared_101
    assert row("user", "101", 3) == shared_101  # seen once
    assert row("user", "101", 12345) == shared_101  # never seen
    assert row("item", "205", 8) == row("item", "205", 4242) == shared_205
    assert len({row("item", "205", 7), row("item", "205", 9), shared_205}) == 3
    for raw in (1, 2, 3, 999):  # every row in the field's own range
        assert f101.offset <= row("user", "101", raw) < f101.offset + f101.rows
    # the masks travel in the contract's JSON, and the same ids hash the same after a round trip
    back = FeatureContract.from_dict(r.to_dict())
    assert back == r and back.field("205").rare == f205.rare
    assert c.with_rare(counts, min_count=1) is c  # 1: every id its own row


def test_a_user_row_counts_once_per_impression():
    c = fitted()
    ids = np.full((2, c.width("user")), -1, np.int64)
    col = dict((f.name, s) for f, s in c.columns("user"))["101"].start
    ids[:, col] = [5, 6]
    counts = c.bucket_counts("user", ids, times=np.array([3, 1]))["101"]
    assert sorted(counts[counts > 0].tolist()) == [1, 3]


def test_numeric_fields_bucketise_by_quantile_bounds_and_survive_fitting_and_json():
    """A numeric item attribute: quantile bounds from the training values, its bucket by
    searchsorted on the float32 value, weight 1 even in a weighted contract, a missing value
    padding; fit_buckets and with_rare leave it as it is; to/from JSON round-trips (version 3),
    and a contract without one keeps the older JSON (model digests stay)."""
    import numpy as np

    base = FeatureContract.default(weighted=True)
    old = base.fit_buckets({}).to_dict()
    assert "numeric" not in old and all("bounds" not in f for f in old["fields"])
    values = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 8.0, 13.0, np.nan])
    c = base.with_numeric({"price": values}, buckets=4)
    f = c.field("price")
    assert f.side == "item" and f.numeric and f.bounds == (2.0, 3.0, 5.0)
    assert c.fields[-1] is f and c.version == 3
    c = c.fit_buckets({"205": 100})
    counts = {g.name: np.ones(g.buckets, int) for g in c.fields}
    c = c.with_rare(counts, 2)
    f = c.field("price")
    assert f.buckets == 4 and f.rare == "" and c.num_rows == f.offset + 4
    assert c.version == 3  # the rare masks do not take a numeric contract back to 2
    col = dict((g.name, s) for g, s in c.columns("item"))["price"].start
    ids = np.full((5, c.width("item")), -1)
    vals = np.zeros(ids.shape, np.float32)
    ids[:4, col] = 0
    vals[:, col] = [0.5, 2.0, 4.0, 1e9, 3.0]  # row 4: no id, so no number
    rows, w = c.hash_side("item", ids, vals)
    assert (rows[:, col] - f.offset).tolist()[:4] == [0, 1, 2, 3] and rows[4, col] == 0
    assert w[:, col].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]  # the number is no weight
    back = FeatureContract.from_dict(json.loads(c.to_json()))
    assert back == c and back.hash_side("item", ids, vals)[0].tolist() == rows.tolist()
    with pytest.raises(ValueError, match="name of a feature field"):
        base.with_numeric({"206": values})
    with pytest.raises(ValueError, match="no values"):
        base.with_numeric({"rating": np.array([np.nan])})
