"""The generator's named-tables layout: the same impressions, labels, users and items as the
Ali-CCP files of the set, and a spec.yaml that names the tables' columns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from features.spec import load as load_spec
from training.aliccp import parse_common_line, parse_feature_list
from training.generate import FIELD_BASE, TABLES_DIR, generate, main
from training.synthetic.tables import (
    CROSSES,
    GENDER_NAMES,
    SCENE_NAMES,
    USER_ATTRIBUTES,
    USER_LISTS,
)

SPLITS = ("train", "test")
# The Ali-CCP combination field of each cross (its value: the count the cross computes).
CROSS_FIELDS = {
    "category_affinity": "508",
    "shop_affinity": "509",
    "brand_affinity": "702",
    "intent_match": "853",
}
ITEM_FIELDS = {"category": "206", "shop": "207", "brand": "216"}


def read_skeleton(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="ascii").splitlines():
        sid, click, conv, cfi, num, feats = line.split(",", 5)
        rows.append(
            {
                "sample_id": int(sid),
                "click": int(click),
                "conv": int(conv),
                "cfi": cfi,
                "feats": parse_feature_list(feats, int(num)),
            }
        )
    return rows


def read_common(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text(encoding="ascii").splitlines():
        cfi, feats = parse_common_line(line)
        out[cfi] = feats
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("tables")
    generate(out, impressions=3_000, seed=7, layout="both")
    tables = out / TABLES_DIR
    common: dict[str, dict] = {}
    for s in SPLITS:
        common.update(read_common(out / f"common_features_{s}.csv"))
    return {
        "dir": out,
        "tables": tables,
        "skeleton": {s: read_skeleton(out / f"sample_skeleton_{s}.csv") for s in SPLITS},
        "common": common,
        "events": {s: pq.read_table(tables / f"events_{s}.parquet") for s in SPLITS},
        "users": pq.read_table(tables / "users.parquet"),
        "items": pq.read_table(tables / "items.parquet"),
    }


def test_events_are_the_skeleton_rows_in_order(data: dict) -> None:
    for split in SPLITS:
        sk, ev = data["skeleton"][split], data["events"][split].to_pydict()
        assert len(ev["event_id"]) == len(sk) > 0
        assert ev["event_id"] == [r["sample_id"] for r in sk]
        assert ev["click"] == [r["click"] for r in sk]
        assert ev["conversion"] == [r["conv"] for r in sk]
        assert ev["request_id"] == [r["cfi"] for r in sk]
        assert ev["item_id"] == [r["feats"]["205"][0][0] for r in sk]
        assert ev["user_id"] == [data["common"][r["cfi"]]["101"][0][0] for r in sk]
        scenes = [r["feats"]["301"][0][0] - FIELD_BASE["301"] for r in sk]
        assert ev["scene"] == [SCENE_NAMES[k] for k in scenes]
        assert sum(ev["click"]) > 0
    schema = data["events"]["train"].schema
    assert str(schema.field("click").type) == str(schema.field("conversion").type) == "int8"
    assert str(schema.field("user_id").type) == str(schema.field("item_id").type) == "int64"


def test_users_are_the_common_features(data: dict) -> None:
    users = data["users"].to_pydict()
    ids = users["user_id"]
    assert ids == sorted(set(ids))
    row = {u: k for k, u in enumerate(ids)}
    seen = set()
    missing_126 = 0
    for feats in data["common"].values():
        k = row[feats["101"][0][0]]
        seen.add(k)
        for name, field in USER_ATTRIBUTES:
            got = users[name][k]
            if field not in feats:
                assert got is None, (name, k)
                missing_126 += field == "126"
                continue
            raw = feats[field][0][0] - FIELD_BASE[field]
            assert got == (GENDER_NAMES[raw] if name == "gender" else raw), (name, k)
        for name, field, _, _ in USER_LISTS:
            fids, vals = feats.get(field, ([], []))
            assert users[name][k] == [f - FIELD_BASE[field] for f in fids], (name, k)
            assert users[name + "_count"][k] == vals, (name, k)
    assert len(seen) > 50 and missing_126 > 0
    for name, _, _, _ in USER_LISTS:
        assert data["users"].column(name).null_count == 0


def test_items_are_the_aliccp_items(data: dict) -> None:
    items = data["items"].to_pydict()
    ali = pq.read_table(data["dir"] / "items.parquet").to_pydict()
    assert items["item_id"] == ali["item_id"] == sorted(set(items["item_id"]))
    for name, field in ITEM_FIELDS.items():
        assert items[name] == [v - FIELD_BASE[field] for v in ali[field]]
    assert items["intents"] == [[v - FIELD_BASE["210"] for v in row] for row in ali["210"]]
    assert items["price"] == ali["price"]
    # and the skeleton shows every item with these ids
    row = {i: k for k, i in enumerate(items["item_id"])}
    for split in SPLITS:
        for r in data["skeleton"][split]:
            k = row[r["feats"]["205"][0][0]]
            for name, field in ITEM_FIELDS.items():
                assert r["feats"][field][0][0] - FIELD_BASE[field] == items[name][k]


def test_crosses_computed_from_the_tables_are_the_combination_features(data: dict) -> None:
    """The count of the item's category (shop, brand) in the user's recent list is the Ali-CCP
    508 (509, 702) value, 0 where the line has none; the item's intents in the user's recent
    intents are the 853 features: the tables share one id space per embedding."""
    users, items = data["users"].to_pydict(), data["items"].to_pydict()
    urow = {u: k for k, u in enumerate(users["user_id"])}
    irow = {i: k for k, i in enumerate(items["item_id"])}
    counts = {
        lst: [
            dict(zip(m, c, strict=True))
            for m, c in zip(users[lst], users[lst + "_count"], strict=True)
        ]
        for _, lst, _ in CROSSES
    }
    nonzero = dict.fromkeys(CROSS_FIELDS, 0)
    for split in SPLITS:
        ev = data["events"][split].to_pydict()
        for r, uid, iid in zip(data["skeleton"][split], ev["user_id"], ev["item_id"], strict=True):
            u, i = urow[uid], irow[iid]
            for name, lst, key in CROSSES:
                have = counts[lst][u]
                field = CROSS_FIELDS[name]
                written = r["feats"].get(field, ([], []))[1]
                if key == "intents":
                    got = sorted(have[x] for x in items[key][i] if x in have)
                    assert got == sorted(written), (name, r["sample_id"])
                else:
                    want = written[0] if written else 0.0
                    assert len(written) <= 1
                    assert have.get(items[key][i], 0.0) == want, (name, r["sample_id"])
                nonzero[name] += bool(written)
    assert all(n > 0 for n in nonzero.values()), nonzero


def test_spec_names_existing_columns(data: dict) -> None:
    spec = yaml.safe_load((data["tables"] / "spec.yaml").read_text(encoding="utf-8"))
    assert set(spec) == {"keys", "labels", "tables", "features", "price"}
    assert spec["price"] in data["items"].column_names
    paths = spec["tables"]
    assert set(paths["events"]) == set(SPLITS)
    for rel in [*paths["events"].values(), paths["users"], paths["items"]]:
        assert (data["tables"] / rel).is_file(), rel
    events = set(data["events"]["train"].column_names)
    cols = {
        "user": set(data["users"].column_names),
        "item": set(data["items"].column_names),
        "context": events,
    }
    assert set(spec["keys"].values()) <= events
    assert spec["keys"]["user"] in cols["user"] and spec["keys"]["item"] in cols["item"]
    assert set(spec["labels"].values()) <= events
    by_name = {f["name"]: f for f in spec["features"]}
    assert len(by_name) == len(spec["features"])
    for f in spec["features"]:
        if f["side"] == "cross":
            lst, key = by_name[f["count_in"]["list"]], by_name[f["count_in"]["key"]]
            assert lst["side"] == "user" and lst["kind"] == "ids"
            assert key["side"] == "item" and lst["embedding"] == key["embedding"]
            continue
        assert f.get("column", f["name"]) in cols[f["side"]], f
        if "weights" in f:
            assert f["weights"] in cols[f["side"]], f
    # every user attribute written is a feature; price stays out (the fusion reads it)
    written = set(data["users"].column_names) - {n + "_count" for n, _, _, _ in USER_LISTS}
    assert written <= set(by_name)
    assert "price" not in by_name and "price" in cols["item"]


def test_spec_loads_with_the_spec_reader(data: dict) -> None:
    spec = load_spec(data["tables"] / "spec.yaml")
    assert spec.table_path("items") == (data["tables"] / "items.parquet").resolve()
    assert {f.name for f in spec.features if f.side == "cross"} == set(CROSS_FIELDS)


def test_layout_tables_writes_the_same_tables_and_the_truth(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "t"
    main(["--out", str(out), "--impressions", "3000", "--seed", "7", "--layout", "tables"])
    assert not list(out.glob("sample_skeleton_*")) and not (out / "items.parquet").exists()
    assert json.loads((out / "generator.json").read_text())["layout"] == "tables"
    for split in SPLITS:
        name = f"truth_{split}.csv"
        assert (out / TABLES_DIR / name).read_bytes() == (data["dir"] / name).read_bytes()
    files = sorted(p.name for p in (out / TABLES_DIR).iterdir())
    assert files == sorted(p.name for p in data["tables"].iterdir())
    for name in files:
        assert (out / TABLES_DIR / name).read_bytes() == (data["tables"] / name).read_bytes()
    with pytest.raises(ValueError, match="layout"):
        generate(tmp_path / "x", impressions=3_000, layout="csv")
