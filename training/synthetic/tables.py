"""The named-tables layout of a synthetic set: the same impressions as the Ali-CCP files, the
way a shop's own logs would hold them, and the feature spec (features/spec.py) that reads them.

    events_{train,test}.parquet  one row per impression, in the skeleton's order: event_id (the
                                 Ali-CCP sample_id), request_id (the common_feature_index),
                                 user_id, item_id (the Ali-CCP 101 / 205 ids), scene (text),
                                 click, conversion
    users.parquet                one row per user, sorted by user_id: the single-valued
                                 attributes by name (null where the Ali-CCP files omit the
                                 field; gender as text) and the behaviour lists with their counts
                                 (recent_categories / _shops / _brands / _intents: the members
                                 and values of 109_14 / 110_14 / 127_14 / 150_14, in the same
                                 order; empty, never null, where a user has none)
    items.parquet                one row per item, sorted by item_id: category, shop, brand,
                                 intents (list) and price
    spec.yaml                    the feature spec over these tables (paths relative to it)

A category, shop, brand or intent has one id in every table: its index in the world, so a
user's list and an item's attribute share one embedding table, and "count of the item's category
in the user's recent_categories" (category_affinity) is exactly the Ali-CCP 508 value (509, 702,
853 alike). Vectorised: no Python loop per impression or per user.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.synthetic.impressions import Impressions, Sessions
from training.synthetic.world import Users, World
from training.synthetic.writer import FIELD_BASE, SPLITS, _split_rows

SPEC_FILE = "spec.yaml"
EVENTS_FILE = "events_{split}.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"

# One readable name per scene index (field 301); scenes past these are "scene_<k>".
SCENE_NAMES = ("home", "search", "cart", "detail", "feed", "promotion", "live", "video")
# Field 124's values as text; values past these are "gender_<k>".
GENDER_NAMES = ("female", "male", "unknown")
# The single-valued user fields by their column name (gender: text, the others: raw ints).
USER_ATTRIBUTES = (
    ("user_class", "121"),
    ("user_subclass", "122"),
    ("gender", "124"),
    ("age_level", "125"),
    ("purchase_power", "126"),
    ("consumption_level", "127"),
    ("occupation", "128"),
    ("city_level", "129"),
)
TEXT_ATTRIBUTES = {"gender": GENDER_NAMES}
# Behaviour lists: (column, Ali-CCP field, shared embedding, max_len as the contract's default).
USER_LISTS = (
    ("recent_categories", "109_14", "category", 128),
    ("recent_shops", "110_14", "shop", 384),
    ("recent_brands", "127_14", "brand", 256),
    ("recent_intents", "150_14", "intent", 256),
)
COUNT_SUFFIX = "_count"
# Item attributes: (column, shared embedding); intents is a list (max_len 16, field 210's).
ITEM_ATTRIBUTES = (("category", "category"), ("shop", "shop"), ("brand", "brand"))
INTENTS_MAX_LEN = 16
# Crosses: (name, user list, item key): the Ali-CCP 508, 509, 702 and 853 features.
CROSSES = (
    ("category_affinity", "recent_categories", "category"),
    ("shop_affinity", "recent_shops", "shop"),
    ("brand_affinity", "recent_brands", "brand"),
    ("intent_match", "recent_intents", "intents"),
)


def write_tables(out: Path, w: World, users: Users, s: Sessions, imp: Impressions) -> None:
    """events_{train,test}.parquet, users.parquet, items.parquet and spec.yaml into `out`."""
    import pyarrow as pa  # here: the constants above serve loadtest/traffic.py without pyarrow
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    request = pa.array(s.index, type=pa.string())
    scene = pa.array(_names(SCENE_NAMES, int(s.scene.max()) + 1, "scene"), type=pa.string())
    uid = FIELD_BASE["101"] + users.singles["101"].astype(np.int64)
    for split in SPLITS:
        _, rows = _split_rows(s, imp, split)
        table = pa.table(
            {
                "event_id": pa.array(rows.astype(np.int64) + 1),
                "request_id": request.take(pa.array(imp.session[rows])),
                "user_id": pa.array(uid[imp.user[rows]]),
                "item_id": pa.array(FIELD_BASE["205"] + imp.item[rows].astype(np.int64)),
                "scene": scene.take(pa.array(imp.scene[rows])),
                "click": pa.array(imp.click[rows].astype(np.int8)),
                "conversion": pa.array(imp.conv[rows].astype(np.int8)),
            }
        )
        pq.write_table(table, out / EVENTS_FILE.format(split=split), compression="zstd")
    pq.write_table(_users_table(users, uid), out / USERS_FILE, compression="zstd")
    pq.write_table(_items_table(w), out / ITEMS_FILE, compression="zstd")
    (out / SPEC_FILE).write_text(spec_text(), encoding="utf-8")


def _names(names: tuple[str, ...], n: int, prefix: str) -> list[str]:
    return [names[k] if k < len(names) else f"{prefix}_{k}" for k in range(n)]


def _users_table(users: Users, uid: np.ndarray):
    import pyarrow as pa

    cols = {"user_id": pa.array(uid)}
    for name, field in USER_ATTRIBUTES:
        vals = users.singles[field].astype(np.int64)
        absent = vals < 0
        if name in TEXT_ATTRIBUTES:
            n = int(vals.max()) + 1 if len(vals) else 0
            text = pa.array(_names(TEXT_ATTRIBUTES[name], n, name), type=pa.string())
            cols[name] = text.take(pa.array(np.maximum(vals, 0), mask=absent))
        else:
            cols[name] = pa.array(vals, mask=absent)
    for name, field, _, _ in USER_LISTS:
        b = users.lists[field]
        # Sorted by (user, member): each user's run is the Ali-CCP line's members, in its order.
        offsets = pa.array(
            np.r_[0, np.cumsum(np.bincount(b.user, minlength=users.n))].astype(np.int32)
        )
        cols[name] = pa.ListArray.from_arrays(offsets, pa.array(b.member.astype(np.int64)))
        cols[name + COUNT_SUFFIX] = pa.ListArray.from_arrays(
            offsets, pa.array(b.count.astype(np.float32))
        )
    table = pa.table(cols)
    order = np.argsort(uid, kind="stable")
    if np.any(order != np.arange(len(order))):
        table = table.take(pa.array(order))
    return table


def _items_table(w: World):
    import pyarrow as pa

    it = w.items
    cols = {
        "item_id": pa.array(FIELD_BASE["205"] + np.arange(len(it.cat), dtype=np.int64)),
        "category": pa.array(it.cat.astype(np.int64)),
        "shop": pa.array(it.shop.astype(np.int64)),
        "brand": pa.array(it.brand.astype(np.int64)),
        "intents": pa.ListArray.from_arrays(
            pa.array(it.intent_ptr.astype(np.int32)), pa.array(it.intent.astype(np.int64))
        ),
        "price": pa.array(it.price.astype(np.float64)),
    }
    return pa.table(cols)


def spec_text() -> str:
    """spec.yaml: the feature spec over the tables write_tables writes (one flow mapping per
    feature, as docs/spec.md writes them). Price stays out of it, as it is out of the Ali-CCP
    route's features: items.parquet keeps it for the fusion."""
    events = ", ".join(f"{s}: {EVENTS_FILE.format(split=s)}" for s in SPLITS)
    lines = [
        "# The feature spec (features/spec.py) of a synthetic set's named tables, written by",
        "# training/synthetic/tables.py (training.generate --layout tables|both): the set's",
        "# impressions as a shop's own logs. Table paths are relative to this file.",
        "keys: {user: user_id, item: item_id, request: request_id}",
        "labels: {click: click, conversion: conversion}",
        "tables:",
        f"  events: {{{events}}}",
        f"  users: {USERS_FILE}",
        f"  items: {ITEMS_FILE}",
        "price: price  # the items column the fusion's price comes from",
        "features:",
        "  - {name: user_id, side: user, kind: id}",
    ]
    lines += [f"  - {{name: {name}, side: user, kind: id}}" for name, _ in USER_ATTRIBUTES]
    lines += [
        f"  - {{name: {name}, side: user, kind: ids, weights: {name}{COUNT_SUFFIX}, "
        f"embedding: {emb}, max_len: {max_len}}}"
        for name, _, emb, max_len in USER_LISTS
    ]
    lines.append("  - {name: item_id, side: item, kind: id}")
    lines += [
        f"  - {{name: {name}, side: item, kind: id, embedding: {emb}}}"
        for name, emb in ITEM_ATTRIBUTES
    ]
    lines.append(
        "  - {name: intents, side: item, kind: ids, embedding: intent, "
        f"max_len: {INTENTS_MAX_LEN}}}"
    )
    lines.append("  - {name: scene, side: context, kind: id}")
    lines += [
        f"  - {{name: {name}, side: cross, count_in: {{list: {lst}, key: {key}}}}}"
        for name, lst, key in CROSSES
    ]
    return "\n".join(lines) + "\n"
