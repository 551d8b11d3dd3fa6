import subprocess
import sys

import numpy as np
import pytest

from features.contract import ALL_FIELDS, PAD_ROW, FeatureContract, truncate


def fitted(**kw) -> FeatureContract:
    return FeatureContract.default(**kw).fit_buckets({name: 1000 for name in ALL_FIELDS})


def test_contract_imports_neither_torch_nor_web_stack():
    code = (
        "import sys, features, features.calibration, features.parity, training.data, "
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
