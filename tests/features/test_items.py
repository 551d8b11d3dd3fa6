"""features/items.py: the item feature table, built from Ali-CCP rows, saved, loaded, looked up."""

from __future__ import annotations

import numpy as np
import pytest

from features.contract import ITEM_FIELDS, FeatureContract
from features.items import ItemTable, ItemTableError

CONTRACT = FeatureContract.default()


@pytest.fixture(scope="module")
def split(small_generated):  # read by the line-by-line reader: the small set is enough
    from training.aliccp import read_aliccp

    return read_aliccp(small_generated, "train", CONTRACT, orphans="ignore")


@pytest.fixture(scope="module")
def table(split) -> ItemTable:
    return ItemTable.from_rows(CONTRACT, np.asarray(split.item_ids), np.asarray(split.item_vals))


def item_columns(contract, ids, vals):
    cols = dict(contract.columns("item"))
    keep = [cols[contract.field(n)] for n in ITEM_FIELDS]
    return np.concatenate([ids[:, c] for c in keep], 1), np.concatenate(
        [vals[:, c] for c in keep], 1
    )


def test_each_item_keeps_the_newest_features_seen(split):
    ids, vals = np.asarray(split.item_ids).copy(), np.asarray(split.item_vals).copy()
    first = ids[:, 0][0]
    later = np.flatnonzero(ids[:, 0] == first)
    assert len(later) > 1  # an item shown more than once
    col_206 = dict(CONTRACT.columns("item"))[CONTRACT.field("206")].start
    ids[later[-1], col_206] = 4242  # its last impression says another category
    t = ItemTable.from_rows(CONTRACT, ids, vals)
    pos, found = t.index(np.array([first]))
    assert found.all() and t.ids[pos[0], t.columns()["206"]][0] == 4242


def test_the_table_holds_every_item_with_its_own_columns(split, table):
    ids, vals = item_columns(CONTRACT, np.asarray(split.item_ids), np.asarray(split.item_vals))
    assert len(table) == len(np.unique(ids[:, 0]))
    pos, found = table.index(ids[:, 0])
    assert found.all()
    # the generator gives an item the same features in every impression
    assert np.array_equal(table.ids[pos], ids) and np.array_equal(table.vals[pos], vals)
    assert np.isnan(table.price).all()  # Ali-CCP logs carry no price


def test_lookup_is_one_vectorised_search_and_reports_unknown_ids(table):
    want = np.array([table.item_id[3], -5, table.item_id[0], table.item_id[-1] + 1])
    pos, found = table.index(want)
    assert found.tolist() == [True, False, True, False]
    assert pos[0] == 3 and pos[2] == 0


def test_save_and_load_keep_the_content_and_refuse_damage(table, tmp_path):
    path = tmp_path / "items.npz"
    table.save(path)
    again = ItemTable.load(path)
    assert again.digest == table.digest and np.array_equal(again.ids, table.ids)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(ItemTableError):
        ItemTable.load(tmp_path / "bad.npz")
    with pytest.raises(ItemTableError, match="unreadable"):
        ItemTable.load(tmp_path / "missing.npz")


def test_rows_for_a_contract_truncate_by_the_contracts_rule(table):
    narrow = FeatureContract.default(max_len={"210": 2})
    ids, vals = table.rows_for(narrow)
    for r in range(0, len(table), 97):
        feats = {
            name: (table.ids[r, c][table.ids[r, c] >= 0], table.vals[r, c][table.ids[r, c] >= 0])
            for name, c in table.columns().items()
        }
        want_ids, want_vals = narrow.encode_entity("item", feats)
        assert np.array_equal(ids[r], want_ids) and np.array_equal(vals[r], want_vals)
