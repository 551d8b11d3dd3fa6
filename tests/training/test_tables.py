"""training/tables.py: a shop's own named tables (text keys, a device, an hour, a numeric user
attribute, weighted lists sharing a table with an item column, a cross) read by a spec into the
arrays training batches from; bad tables refused naming the column and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import spec as S
from features.values import count_in, text_id
from training import tables as T

SPEC = """\
keys: {user: member, item: sku, request: page_view}
labels: {click: clicked, conversion: ordered}
tables:
  events: {train: ev_train.parquet, test: ev_test.parquet}
  users: members.parquet
  items: skus.parquet
features:
  - {name: member, side: user, kind: id}
  - {name: tier, side: user, kind: id}
  - {name: age, side: user, kind: numeric, buckets: 4}
  - {name: viewed_brands, side: user, kind: ids, weights: viewed_brands_n, embedding: brand,
     max_len: 3, pooling: sum}
  - {name: sku, side: item, kind: id}
  - {name: brand, side: item, kind: id, embedding: brand}
  - {name: device, side: context, kind: id}
  - {name: hour, side: context, kind: numeric}
  - {name: brand_affinity, side: cross, count_in: {list: viewed_brands, key: brand}}
"""


def _write(folder: Path, **tables: pa.Table) -> None:
    for name, t in tables.items():
        pq.write_table(t, folder / f"{name}.parquet")


def _members() -> pa.Table:
    return pa.table(
        {
            "member": ["m-3", "m-1", "m-2"],
            "tier": ["gold", None, "silver"],
            "age": pa.array([41.0, None, 23.0]),
            "viewed_brands": pa.array(
                [["b1", "b2", "b3", "b4", "b1"], [], None], pa.list_(pa.string())
            ),
            "viewed_brands_n": pa.array(
                [[1.0, 5.0, 2.0, 4.0, 3.0], [], None], pa.list_(pa.float64())
            ),
        }
    )


def _skus() -> pa.Table:
    return pa.table({"sku": ["s1", "s2", "s3"], "brand": ["b1", "b4", None]})


def _events(n: int = 6, **override) -> pa.Table:
    cols = {
        "page_view": [f"pv{k // 2}" for k in range(n)],
        "member": (["m-3", "m-1", "m-9"] * n)[:n],
        "sku": (["s1", "s2", "s3", "s9"] * n)[:n],
        "clicked": pa.array(([1, 0, 1] * n)[:n], pa.int8()),
        "ordered": pa.array(([1, 0, 0] * n)[:n], pa.int8()),
        "device": (["ios", "android", None] * n)[:n],
        "hour": pa.array(([9, 23, 14] * n)[:n], pa.int32()),
    }
    cols.update(override)
    return pa.table(cols)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    (tmp_path / "spec.yaml").write_text(SPEC)
    _write(
        tmp_path,
        members=_members(),
        skus=_skus(),
        ev_train=_events(),
        ev_test=_events(3),
    )
    return tmp_path / "spec.yaml"


def test_a_shops_tables_become_the_contracts_raw_arrays(shop: Path):
    spec, contract, train, test = T.load(shop, seed=3)
    assert contract.version == 4 and contract.spec == spec.to_dict()
    assert contract.keys == {
        "user": {"dtype": "text", "field": "member"},
        "item": {"dtype": "text", "field": "sku"},
    }
    assert {f.name: f.dtype for f in contract.fields if f.dtype} == {
        "member": "text",
        "tier": "text",
        "viewed_brands": "text",
        "sku": "text",
        "brand": "text",
        "device": "text",
    }
    # users: one row per member; training groups rows by request (page view) and member
    cols = {f.name: c for f, c in contract.columns("user")}
    assert len(train.user_ids) == 3
    assert train.row_user[0] == train.row_user[3]  # m-3 in pv0 and in pv1
    assert train.session[0] != train.session[3] and len(np.unique(train.session)) == 6
    by_member = {int(train.user_ids[u, cols["member"].start]): u for u in range(3)}
    m3, m1, m9 = (by_member[text_id(k)] for k in ("m-3", "m-1", "m-9"))
    assert train.user_ids[m3, cols["tier"].start] == text_id("gold")
    assert train.user_ids[m1, cols["tier"].start] == -1  # null: missing
    # a list longer than max_len keeps its highest weights, in list order
    vb = cols["viewed_brands"]
    assert train.user_ids[m3, vb].tolist() == [text_id("b2"), text_id("b4"), text_id("b1")]
    assert train.user_vals[m3, vb].tolist() == [5.0, 4.0, 3.0]
    assert train.user_ids[m1, vb].tolist() == [-1, -1, -1]
    # a member the users table lacks keeps its key feature only
    assert train.user_ids[m9].tolist() == [text_id("m-9")] + [-1] * (contract.width("user") - 1)
    assert (train.user_ids[m3, cols["age"].start], train.user_vals[m3, cols["age"].start]) == (
        0,
        41,
    )
    # events: the orphan-free rows in table order, labels, the item's table row, the context
    icols = {f.name: c.start for f, c in contract.columns("item")}
    assert train.sample_id.tolist() == [0, 1, 2, 3, 4, 5]
    assert train.click.tolist() == [1, 0, 1, 1, 0, 1] and train.conv.tolist() == [1, 0, 0, 1, 0, 0]
    assert train.item_ids[0, icols["brand"]] == text_id("b1")
    assert train.item_ids[3, icols["sku"]] == text_id("s9")  # not in the items table
    assert train.item_ids[3, icols["brand"]] == -1
    assert train.item_ids[2, icols["device"]] == -1  # null device
    assert train.item_vals[1, icols["hour"]] == 23
    # the cross: the weight of the item's brand in the member's list as the model sees it
    cross = train.item_vals[:, icols["brand_affinity"]]
    assert cross.tolist() == [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert (train.item_ids[:, icols["brand_affinity"]] == 0).all()
    # bounds fitted for numeric and cross fields; the shared table is one range of rows
    assert contract.field("age").bounds and contract.field("brand_affinity").bounds
    assert len(test) == 3


def test_a_fitted_spec_contract_shares_the_brand_table_between_sides(shop: Path):
    from training.fitting import fit_contract

    spec, contract, train, _ = T.load(shop)
    fitted = fit_contract(contract, train, min_count=spec.min_counts(1), fixed=spec.fixed_buckets())
    vb, brand = fitted.field("viewed_brands"), fitted.field("brand")
    assert (vb.offset, vb.buckets) == (brand.offset, brand.buckets)
    # the user graph's rows and the item graph's rows overlap exactly on the shared table
    u_lo, u_hi = fitted.side_rows("user")
    i_lo, i_hi = fitted.side_rows("item")
    assert u_hi == vb.offset + vb.rows and i_lo == brand.offset
    # one brand hashes to one row on either side
    u_rows, _ = fitted.hash_side("user", train.user_ids, train.user_vals)
    i_rows, _ = fitted.hash_side("item", train.item_ids, train.item_vals)
    ucols = {f.name: c for f, c in fitted.columns("user")}
    icols = {f.name: c for f, c in fitted.columns("item")}
    b1_user = u_rows[:, ucols["viewed_brands"]][
        train.user_ids[:, ucols["viewed_brands"]] == text_id("b1")
    ]
    b1_item = i_rows[:, icols["brand"].start][
        train.item_ids[:, icols["brand"].start] == text_id("b1")
    ]
    assert set(b1_user.tolist()) == set(b1_item.tolist()) and len(set(b1_item.tolist())) == 1
    # round trip through the manifest's JSON
    again = type(fitted).from_dict(fitted.to_dict())
    assert again == fitted and again.spec == fitted.spec


def test_count_in_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    lists = rng.integers(-1, 6, (5, 7))
    weights = rng.random((5, 7)).astype(np.float32) + 0.5
    row_user = rng.integers(0, 5, 40)
    keys = rng.integers(-1, 8, (40, 3))
    want = [
        sum(
            float(weights[row_user[n], j])
            for k in keys[n]
            if k >= 0
            for j in range(7)
            if lists[row_user[n], j] == k
        )
        for n in range(40)
    ]
    np.testing.assert_allclose(count_in(lists, weights, row_user, keys), want, rtol=1e-6)
    assert count_in(np.full((1, 2), -1), np.zeros((1, 2)), [0], [[3]]).tolist() == [0.0]


def _bad(tmp_path: Path, spec_text: str = SPEC, **tables: pa.Table) -> Path:
    (tmp_path / "spec.yaml").write_text(spec_text)
    base = {"members": _members(), "skus": _skus(), "ev_train": _events(), "ev_test": _events(3)}
    _write(tmp_path, **{**base, **tables})
    return tmp_path / "spec.yaml"


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"members": pa.concat_tables([_members(), _members().slice(0, 1)])},
            "tables.users (members.parquet): column 'member': the key of row 3 ('m-3') is on "
            "more than one row",
        ),
        (
            {"ev_train": _events(clicked=pa.array([1, 0, 2, 0, 0, 0], pa.int8()))},
            "column 'clicked' (labels.click): row 2 is 2.0, not 0 or 1",
        ),
        (
            {"ev_train": _events(member=["m-3", None, "m-1", "m-1", "m-1", "m-1"])},
            "column 'member' (keys.user): row 1 is null",
        ),
        (
            {
                "members": _members().set_column(
                    4,
                    "viewed_brands_n",
                    pa.array([[1.0, -5.0, 2.0, 4.0, 3.0], [], None], pa.list_(pa.float64())),
                )
            },
            "column 'viewed_brands': row 0: weight -5.0 is not in (0, 1e+06]",
        ),
        (
            {
                "members": _members().set_column(
                    4, "viewed_brands_n", pa.array([[1.0], [], None], pa.list_(pa.float64()))
                )
            },
            "row 0: the weights list is not as long as its ids'",
        ),
        (
            {"ev_test": _events(3, hour=pa.array(["9", "23", "14"]))},
            "tables.events.test: column 'hour' is text, in the train events int",
        ),
        (
            {"skus": pa.table({"sku": ["s1"], "brand": [7]})},
            "viewed_brands holds text values but brand holds int",
        ),
        (
            {"members": _members().drop_columns(["tier"])},
            "features (tier).column: the users table has no column 'tier'",
        ),
    ],
)
def test_a_bad_table_is_refused_naming_the_column(tmp_path, tables, message):
    path = _bad(tmp_path, **tables)
    with pytest.raises(S.SpecError) as e:
        T.load(path)
    assert message in str(e.value)


def test_a_missing_or_broken_table_file_is_refused(tmp_path):
    path = _bad(tmp_path)
    (tmp_path / "skus.parquet").unlink()
    with pytest.raises(S.SpecError, match="tables.items: no file"):
        T.load(path)
    (tmp_path / "skus.parquet").write_text("not parquet")
    with pytest.raises(S.SpecError, match="tables.items: .* is not a Parquet file"):
        T.load(path)


def test_an_event_feature_is_read_per_impression(tmp_path):
    """side: event, an events column of each impression (a slot, a position): its row's value."""
    spec = SPEC.replace(
        "  - {name: device, side: context, kind: id}\n",
        "  - {name: device, side: context, kind: id}\n  - {name: slot, side: event, kind: id}\n",
    )
    path = _bad(
        tmp_path,
        spec,
        ev_train=_events(slot=pa.array([3, 1, 4, 1, 5, 9], pa.int64())),
        ev_test=_events(3, slot=pa.array([2, 6, 5], pa.int64())),
    )
    _, contract, train, test = T.load(path)
    assert contract.field("slot").source == "event" and contract.field("slot").side == "item"
    col = {f.name: c.start for f, c in contract.columns("item")}["slot"]
    assert train.item_ids[:, col].tolist() == [3, 1, 4, 1, 5, 9]
    assert test.item_ids[:, col].tolist() == [2, 6, 5]


def test_an_empty_text_is_missing_and_a_numeric_without_values_is_refused(tmp_path):
    members = _members().set_column(1, "tier", pa.array(["silver", "", None]))  # m-3, m-1, m-2
    path = _bad(tmp_path, members=members)
    _, contract, train, _ = T.load(path)
    col = {f.name: c.start for f, c in contract.columns("user")}["tier"]
    # the split's members: m-3 (silver), m-1 (empty: missing), m-9 (not in the table)
    assert sorted(train.user_ids[:, col].tolist()) == [-1, -1, text_id("silver")]
    no_age = _members().set_column(2, "age", pa.array([None, None, None], pa.float64()))
    with pytest.raises(S.SpecError, match="numeric column 'age' has no values"):
        T.load(_bad(tmp_path, members=no_age))


def test_unsigned_ids_past_int64_lose_their_sign_bit_as_every_integer_id():
    big = pa.array([2**63 + 5, 7, None], pa.uint64())
    assert T.raw_ids(big, "int").tolist() == [5, 7, -1]
