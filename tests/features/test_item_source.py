"""features/item_source.py: a user's Parquet item table -> the same ItemTable an Ali-CCP build
gives, and every column it cannot take refused with a message naming the column and the items."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.contract import FeatureContract, truncate
from features.item_source import from_parquet
from features.items import ItemTable, ItemTableError

CONTRACT = FeatureContract.default()


def as_columns(table: ItemTable, price: bool = True) -> dict[str, pa.Array]:
    """An ItemTable written the way a user's table holds it: a column per field, nulls where an
    item has no id, `210` as lists, the item id without a `205` column."""
    out = {"item_id": pa.array(table.item_id)}
    for name, c in table.columns().items():
        ids = table.ids[:, c]
        if name == "205":
            assert np.array_equal(ids[:, 0], table.item_id)
            continue
        if ids.shape[1] == 1:
            out[name] = pa.array(ids[:, 0], mask=ids[:, 0] < 0)
        else:
            out[name] = pa.array([r[r >= 0].tolist() or None for r in ids], pa.list_(pa.int64()))
    if price:
        out["price"] = pa.array(table.price, mask=np.isnan(table.price))
    return out


def write(path, columns: dict, rows: np.ndarray | None = None):
    t = pa.table(columns)
    pq.write_table(t if rows is None else t.take(pa.array(rows)), path)
    return path


@pytest.fixture(scope="module")
def aliccp(tmp_path_factory) -> ItemTable:
    """The table `ranker items build --data` gives for a small generated folder."""
    from ranker.items import build_from_aliccp
    from training.generate import generate

    data = tmp_path_factory.mktemp("aliccp")
    generate(data, impressions=20_000, seed=3)
    return build_from_aliccp(data, ["train", "test"])


def test_a_parquet_table_builds_the_same_table_as_the_aliccp_files(aliccp, tmp_path):
    shuffled = np.random.default_rng(0).permutation(len(aliccp))  # any row order
    t = from_parquet(write(tmp_path / "items.parquet", as_columns(aliccp), shuffled))
    assert t.digest == aliccp.digest and len(t) == len(aliccp)
    # an explicit 205 equal to the item id, and weights of 1, say the same
    cols = as_columns(aliccp)
    cols["205"] = cols["item_id"]
    cols["206_weights"] = pa.array(np.ones(len(aliccp)))
    cols["210_weights"] = pa.array(
        [None if x is None else [1.0] * len(x) for x in cols["210"].to_pylist()]
    )
    assert from_parquet(write(tmp_path / "again.parquet", cols)).digest == aliccp.digest


def test_prices_follow_their_items_and_missing_ones_are_unknown(tmp_path):
    cols = {
        "item_id": pa.array([30, 10, 20, 40]),
        "206": pa.array([3, 1, None, 4]),
        "price": pa.array([3.5, None, float("nan"), 0.0]),
    }
    t = from_parquet(write(tmp_path / "p.parquet", cols))
    assert t.item_id.tolist() == [10, 20, 30, 40]
    assert np.isnan(t.price[:2]).all() and t.price[2:].tolist() == [3.5, 0.0]
    c = t.columns()
    assert t.ids[:, c["206"]].ravel().tolist() == [1, -1, 3, 4]  # a null is an absent field
    assert t.vals[:, c["206"]].ravel().tolist() == [1.0, 0.0, 1.0, 1.0]
    assert t.ids[:, c["205"]].ravel().tolist() == [10, 20, 30, 40]  # the item id itself
    del cols["price"]  # no price column: every price unknown, not an error
    assert np.isnan(from_parquet(write(tmp_path / "np.parquet", cols)).price).all()


def test_a_205_column_gives_the_feature_id_and_a_null_there_is_the_item_id(tmp_path):
    cols = {"item_id": pa.array([1, 2]), "205": pa.array([77, None])}
    t = from_parquet(write(tmp_path / "i.parquet", cols))
    assert t.ids[:, t.columns()["205"]].ravel().tolist() == [77, 2]
    assert t.vals[:, t.columns()["205"]].ravel().tolist() == [1.0, 1.0]


def test_long_lists_keep_what_the_contracts_truncate_keeps(tmp_path):
    n = CONTRACT.field("210").max_len
    rng = np.random.default_rng(1)
    lists = [rng.integers(0, 1000, size).tolist() for size in (n + 5, n, 3, 2 * n)]
    weights = [rng.uniform(0.5, 9.0, len(x)).round(3).tolist() for x in lists]
    base = {"item_id": pa.array([1, 2, 3, 4]), "210": pa.array(lists, pa.list_(pa.int64()))}
    c = CONTRACT.field("210")
    for with_weights in (False, True):
        cols = {**base, "210_weights": pa.array(weights)} if with_weights else base
        t = from_parquet(write(tmp_path / f"l{with_weights}.parquet", cols))
        s = t.columns()["210"]
        for r, (ids, w) in enumerate(zip(lists, weights, strict=True)):
            want = truncate(ids, w if with_weights else np.ones(len(ids)), c.max_len)
            got = t.ids[r, s][t.ids[r, s] >= 0]
            assert got.tolist() == want[0].tolist()
            assert t.vals[r, s][: len(got)].tolist() == want[1].tolist()


BASE = {
    "item_id": pa.array([5, 6, 7]),
    "206": pa.array([1, 2, 3]),
    "210": pa.array([[1, 2], [3], None], pa.list_(pa.int64())),
    "price": pa.array([1.0, 2.0, 3.0]),
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"item_id": pa.array([5, None, 7])}, "item_id has 1 nulls"),
        ({"item_id": pa.array([5, 6, 5])}, "one row per item, and item ids 5 repeat"),
        ({"item_id": pa.array([5, -6, 7])}, "column item_id: negative ids for item ids -6"),
        ({"item_id": pa.array(["a", "b", "c"])}, "column item_id is string: ids are integers"),
        ({"206": pa.array([1.0, 2.0, 3.0])}, "column 206 is double: ids are integers"),
        ({"206": pa.array([[1], [2], [3]])}, "field 206 takes one integer id"),
        ({"206": pa.array([1, -2, 3])}, "column 206: negative ids for item ids 6"),
        ({"206": pa.array([1, 2**64 - 1, 3], pa.uint64())}, "column 206: Integer value"),
        ({"210": pa.array([1, 2, 3])}, "column 210 is int64: field 210 takes a list of ids"),
        ({"210": pa.array([[1, None], [3], None])}, "null ids in the lists of item ids 5"),
        ({"210_weights": pa.array([[1.0], [1.0], None])}, "not as long as their ids in 210 for"),
        ({"210_weights": pa.array([[1.0, 0.0], [1.0], None])}, "outside (0, 1e+06] for item ids 5"),
        ({"206_weights": pa.array([1.0, float("inf"), 1.0])}, "outside (0, 1e+06] for item ids 6"),
        ({"216_weights": pa.array([1.0, 1.0, 1.0])}, "column 216_weights without column 216"),
        ({"price": pa.array([1.0, -2.0, 3.0])}, "column price: negative, infinite or over"),
        ({"price": pa.array([1.0, 2.0, float("inf")])}, "over 1e+09 for item ids 7"),
        ({"price": pa.array(["1", "2", "3"])}, "column price is string: expected numbers"),
        ({"title": pa.array(["a", "b", "c"])}, "unknown columns 'title'"),
        ({"508": pa.array([1, 2, 3])}, "'508' (not an item's own field: it comes with the"),
        ({"109_14": pa.array([1, 2, 3])}, "'109_14' (a user field"),
    ],
)
def test_what_a_table_cannot_say_is_refused_naming_it(tmp_path, change, message):
    path = write(tmp_path / "bad.parquet", {**BASE, **change})
    with pytest.raises(ItemTableError) as e:
        from_parquet(path)
    assert message in str(e.value)


def test_a_table_without_ids_or_rows_or_with_a_column_twice_or_not_parquet_is_refused(tmp_path):
    no_id = {k: v for k, v in BASE.items() if k != "item_id"}
    with pytest.raises(ItemTableError, match="no item_id column"):
        from_parquet(write(tmp_path / "a.parquet", no_id))
    with pytest.raises(ItemTableError, match="has no rows"):
        from_parquet(write(tmp_path / "b.parquet", {k: v[:0] for k, v in BASE.items()}))
    twice = pa.Table.from_arrays(
        [pa.array([1]), pa.array([2]), pa.array([3])], ["item_id", "206", "206"]
    )
    pq.write_table(twice, tmp_path / "t.parquet")
    with pytest.raises(
        ItemTableError, match=r"unreadable .*Multiple matches for FieldRef.Name\(206\)"
    ):
        from_parquet(tmp_path / "t.parquet")
    (tmp_path / "c.parquet").write_bytes(b"item_id,206\n1,2\n")
    with pytest.raises(ItemTableError, match="unreadable Parquet table"):
        from_parquet(tmp_path / "c.parquet")


def test_duplicates_are_named_and_counted(tmp_path):
    ids = np.repeat(np.arange(100, 108), 2)
    with pytest.raises(ItemTableError, match=r"item ids 100, 101, 102, 103, 104 \(and 3 more\)"):
        from_parquet(write(tmp_path / "d.parquet", {"item_id": pa.array(ids)}))
