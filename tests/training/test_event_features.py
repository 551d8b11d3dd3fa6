"""training/tables.py: a spec with no users or items table reads the user's and the item's
features from each event (the user and item as of each event: what an impression log holds, and
what `ranker join` writes). The same shop read both ways gives the same arrays, row for row; a
column of raw ids (`raw: text`, the log's form) reads as the texts it was hashed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import spec as S
from features.values import text_id
from tests.training.test_tables import SPEC, _events, _members, _skus, _write
from training import tables as T

USER_COLS = ("tier", "age", "viewed_brands", "viewed_brands_n")


def _per_event(events: pa.Table, raw: bool) -> pa.Table:
    """The events with each one's member and sku columns beside it (null where the side table
    lacks it); `raw`: the text ids as the raw ids they hash to."""
    members, skus = _members().to_pylist(), _skus().to_pylist()
    by_member = {m["member"]: m for m in members}
    by_sku = {s["sku"]: s for s in skus}
    rows = events.to_pylist()
    out = dict(events.to_pydict())

    def texts(v):
        if not raw or v is None:
            return v
        return [text_id(x) for x in v] if isinstance(v, list) else text_id(v)

    for col in USER_COLS:
        vals = [by_member.get(r["member"], {}).get(col) for r in rows]
        out[col] = [texts(v) for v in vals] if col in ("tier", "viewed_brands") else vals
    out["brand"] = [texts(by_sku.get(r["sku"], {}).get("brand")) for r in rows]
    types = {
        "tier": pa.int64() if raw else pa.string(),
        "age": pa.float64(),
        "viewed_brands": pa.list_(pa.int64() if raw else pa.string()),
        "viewed_brands_n": pa.list_(pa.float64()),
        "brand": pa.int64() if raw else pa.string(),
    }
    return pa.table(
        {k: pa.array(v, types.get(k)) if k in types else events[k] for k, v in out.items()}
    )


def _spec_per_event(raw: bool) -> str:
    text = SPEC.replace("  users: members.parquet\n  items: skus.parquet\n", "")
    if raw:
        for name in ("tier", "viewed_brands", "brand"):
            text = text.replace(f"{{name: {name}, ", f"{{name: {name}, raw: text, ")
    return text


@pytest.fixture
def both(tmp_path: Path) -> tuple[Path, Path, Path]:
    side, per, raw = (tmp_path / n for n in ("side", "per", "raw"))
    for d in (side, per, raw):
        d.mkdir()
    (side / "spec.yaml").write_text(SPEC)
    _write(side, members=_members(), skus=_skus(), ev_train=_events(), ev_test=_events(3))
    for d, is_raw in ((per, False), (raw, True)):
        (d / "spec.yaml").write_text(_spec_per_event(is_raw))
        _write(
            d,
            ev_train=_per_event(_events(), is_raw),
            ev_test=_per_event(_events(3), is_raw),
        )
    return side / "spec.yaml", per / "spec.yaml", raw / "spec.yaml"


def _same_rows(a, b) -> None:
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.item_vals, b.item_vals)
    assert np.array_equal(a.user_ids[a.row_user], b.user_ids[b.row_user])
    assert np.array_equal(a.user_vals[a.row_user], b.user_vals[b.row_user])
    assert np.array_equal(a.click, b.click) and np.array_equal(a.conv, b.conv)


def test_features_read_from_each_event_equal_the_side_tables(both):
    side, per, raw = both
    s_spec, s_contract, s_train, s_test = T.load(side, seed=3)
    for path in (per, raw):
        spec, contract, train, test = T.load(path, seed=3)
        assert not spec.users and not spec.items
        # the same value types, so the same hashing online, raw ids or not
        assert [(f.name, f.dtype) for f in contract.fields] == [
            (f.name, f.dtype) for f in s_contract.fields
        ]
        assert contract.keys == s_contract.keys
        _same_rows(s_train, train)  # crosses counted from each event's own user list
        _same_rows(s_test, test)
        # one user row per request: the rows are the requests
        assert train.session is None and len(train.user_ids) == len(
            {(e["page_view"], e["member"]) for e in _events().to_pylist()}
        )
    spec = S.load(raw)
    assert spec.feature("brand").to_dict()["raw"] == "text"


def test_a_raw_column_must_hold_integers(both):
    _, _, raw = both
    t = pq.read_table(raw.parent / "ev_train.parquet")
    t = t.set_column(t.schema.get_field_index("brand"), "brand", pa.array(["b1"] * len(t)))
    pq.write_table(t, raw.parent / "ev_train.parquet")
    with pytest.raises(S.SpecError, match=r"column 'brand' is text; a id feature reads int"):
        T.load(raw)


def test_a_missing_event_column_says_where_a_side_feature_is_read(both):
    _, per, _ = both
    t = pq.read_table(per.parent / "ev_train.parquet").drop_columns(["tier"])
    pq.write_table(t, per.parent / "ev_train.parquet")
    with pytest.raises(S.SpecError, match=r"no column 'tier' \(a user feature is read from"):
        T.load(per)


def test_a_users_values_on_its_requests_first_event_only_read_across_batches(both, monkeypatch):
    """The impression log's form: the user's columns on each request's first event only (null
    on the others: here on each (request, user) pair's first), a request split across two read
    batches: every event still gets its request's user, as from the side tables."""
    side, per, _ = both
    t = pq.read_table(per.parent / "ev_train.parquet")
    pairs = list(zip(t["page_view"].to_pylist(), t["member"].to_pylist(), strict=True))
    first = [pairs.index(p) == k for k, p in enumerate(pairs)]  # each (request, user)'s first
    for col in USER_COLS:
        k = t.schema.get_field_index(col)
        values = [v if f else None for v, f in zip(t[col].to_pylist(), first, strict=True)]
        t = t.set_column(k, col, pa.array(values, t.schema.field(col).type))
    pq.write_table(t, per.parent / "ev_train.parquet")
    monkeypatch.setattr(T, "BATCH_ROWS", 3)  # pv1's two events in two batches
    _, _, s_train, _ = T.load(side, seed=3)
    _, _, train, _ = T.load(per, seed=3)
    _same_rows(s_train, train)
    assert len(train.user_ids) == len(set(pairs))  # one row per (request, user)
