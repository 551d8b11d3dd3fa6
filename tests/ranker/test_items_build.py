"""ranker/items.py with --table: a user's Parquet table becomes an item table the service ranks
by ids exactly as it ranks the same items sent with their features, and a table it cannot take
stops the command with the reason."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from support import entity

from features.contract import COMBINATION_FIELDS, CONTEXT_FIELDS, ITEM_FIELDS
from features.item_source import from_parquet
from features.items import ItemTable, ItemTableError
from ranker import items
from service.config import Settings
from service.main import create_app

OUTPUTS = ("pctr", "pcvr", "pctcvr", "score")


def parquet_of_sample_items(contract, s, path) -> dict[int, float]:
    """The sample rows' items as a user's table (one row each, weights from the rows' values, a
    price each): {item id: price}."""
    cols = dict(contract.columns("item"))
    ids, vals = np.asarray(s["item_ids"]), np.asarray(s["item_vals"])
    item = ids[:, cols[contract.field("205")].start]
    _, first = np.unique(item, return_index=True)
    ids, vals, item = ids[first], vals[first], item[first]
    price = 1.0 + item % 13
    table = {"item_id": pa.array(item), "price": pa.array(price)}
    for name in ITEM_FIELDS:
        if name == "205":
            continue
        c = cols[contract.field(name)]
        i, v = ids[:, c], vals[:, c]
        if c.stop - c.start == 1:
            table[name] = pa.array(i[:, 0], mask=i[:, 0] < 0)
            table[f"{name}_weights"] = pa.array(v[:, 0], mask=i[:, 0] < 0)
        else:
            table[name] = pa.array([r[r >= 0].tolist() for r in i], pa.list_(pa.int64()))
            table[f"{name}_weights"] = pa.array(
                [w[r >= 0].tolist() for r, w in zip(i, v, strict=True)], pa.list_(pa.float64())
            )
    pq.write_table(pa.table(table), path)
    return dict(zip(item.tolist(), price.tolist(), strict=True))


def test_rank_by_ids_from_a_parquet_table_equals_rank_by_features(exported, samples, tmp_path):
    contract, s = samples
    prices = parquet_of_sample_items(contract, s, tmp_path / "items.parquet")
    out = tmp_path / "items.npz"
    assert items.main(["build", "--table", str(tmp_path / "items.parquet"), "--out", str(out)]) == 0
    assert len(ItemTable.load(out)) == len(prices)
    col_205 = dict(contract.columns("item"))[contract.field("205")].start
    own = set(COMBINATION_FIELDS + CONTEXT_FIELDS)
    settings = Settings(model_dir=exported, item_table=out, max_candidates=2000)
    with TestClient(create_app(settings)) as c:
        for user in np.unique(s["row_user"])[:8]:
            rows = np.flatnonzero(s["row_user"] == user)
            ids = [int(s["item_ids"][r][col_205]) for r in rows]
            base = {
                "user_id": f"parquet-{user}",
                "user_features": entity(
                    contract, "user", s["user_ids"][user], s["user_vals"][user]
                ),
                "fusion": {"c": 0.5},  # the table's prices feed the score
            }
            full = [
                {
                    "item_id": i,
                    "price": prices[i],
                    "features": {
                        k: v
                        for k, v in entity(
                            contract, "item", s["item_ids"][r], s["item_vals"][r]
                        ).items()
                        if k not in own
                    },
                }
                for i, r in zip(ids, rows, strict=True)
            ]
            a = c.post("/rank", json={**base, "candidates": full})
            b = c.post("/rank", json={**base, "item_ids": ids})
            assert a.status_code == b.status_code == 200, a.text + b.text
            assert b.json()["unknown_items"] == []
            got = {it["item_id"]: it for it in b.json()["items"]}
            for it in a.json()["items"]:
                for k in OUTPUTS:
                    assert abs(it[k] - got[it["item_id"]][k]) < 1e-5, (k, it, got[it["item_id"]])


def small_table(path, **change) -> str:
    cols = {
        "item_id": pa.array([3, 1, 2]),
        "206": pa.array([30, 10, None]),
        "210": pa.array([[7, 8], None, [9]], pa.list_(pa.int64())),
        "price": pa.array([9.5, None, 2.0]),
        **change,
    }
    pq.write_table(pa.table(cols), path)
    return str(path)


def test_items_build_writes_a_table_from_parquet(tmp_path):
    out = tmp_path / "items.npz"
    assert (
        items.main(["build", "--table", small_table(tmp_path / "t.parquet"), "--out", str(out)])
        == 0
    )
    t = ItemTable.load(out)
    assert t.item_id.tolist() == [1, 2, 3] and "(Parquet)" in t.source
    assert np.isnan(t.price[0]) and t.price[1:].tolist() == [2.0, 9.5]


def test_items_build_keeps_numeric_attribute_columns_and_reads_csv(tmp_path):
    """A number column that is no field's is a numeric attribute (a model trained with --items
    reads it); a CSV table holds the same columns, lists separated by spaces or `;`."""
    path = small_table(tmp_path / "attrs.parquet", rating=pa.array([4.5, None, 2.0]))
    out = tmp_path / "items.npz"
    assert items.main(["build", "--table", str(path), "--out", str(out)]) == 0
    t = ItemTable.load(out)
    assert set(t.numeric) == {"rating"}
    assert np.isnan(t.values("rating")[0]) and t.values("rating")[1:].tolist() == [2.0, 4.5]
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,206,210,210_weights,price,sales\n5,7,1;2 3,1;2;1,9.5,10\n3,,,,,\n")
    t = from_parquet(csv)
    assert t.item_id.tolist() == [3, 5] and "(CSV)" in t.source
    c = t.columns()
    assert t.ids[1, c["210"]][:4].tolist() == [1, 2, 3, -1]
    assert t.vals[1, c["210"]][:3].tolist() == [1.0, 2.0, 1.0]
    assert t.ids[0, c["210"]][0] == -1 and np.isnan(t.price[0]) and t.price[1] == 9.5
    assert t.values("sales").tolist()[1] == 10.0
    bad = tmp_path / "bad.parquet"
    small_table(bad, rating=pa.array([1.0, float("inf"), 2.0]))
    with pytest.raises(ItemTableError, match="column rating: infinite"):
        from_parquet(bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--table", "{dup}"], "item_id: one row per item, and item ids 1 repeat"),
        (["--table", "{unknown}"], "unknown columns 'brand'"),
        (["--table", "{good}", "--split", "test"], "--split goes with --data"),
        (["--table", "{good}", "--data", "x"], "not allowed with argument"),
        (["--table", "{missing}"], "unreadable Parquet table"),
    ],
)
def test_items_build_refuses_a_table_it_cannot_take_saying_why(tmp_path, capsys, argv, message):
    paths = {
        "dup": small_table(tmp_path / "dup.parquet", item_id=pa.array([1, 1, 2])),
        # a number column of another name is a numeric attribute; text is no column of a table
        "unknown": small_table(tmp_path / "unknown.parquet", brand=pa.array(["a", "b", "c"])),
        "good": small_table(tmp_path / "good.parquet"),
        "missing": str(tmp_path / "missing.parquet"),
    }
    out = tmp_path / "items.npz"
    with pytest.raises(SystemExit) as e:
        items.main(["build", *(a.format(**paths) for a in argv), "--out", str(out)])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
