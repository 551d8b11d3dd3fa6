"""ranker/predict.py and ranker/items.py as commands: batch scores equal what /rank answers for
the same impressions (the offline side of the offline/online check)."""

from __future__ import annotations

import csv

import numpy as np
from fastapi.testclient import TestClient
from support import entity

from ranker import items, predict
from service.config import Settings
from service.main import create_app


def test_predict_equals_rank_for_the_same_impressions(exported, generated, tmp_path):
    out = tmp_path / "pred.csv"
    assert (
        predict.main(["--model", str(exported), "--data", str(generated), "--out", str(out)]) == 0
    )
    with open(out) as f:
        got = {int(r["sample_id"]): r for r in csv.DictReader(f)}
    from service.engine import Engine
    from training.aliccp import read_aliccp

    contract = Engine(exported).contract
    s = read_aliccp(generated, "test", contract, orphans="ignore")
    assert len(got) == len(s)
    with TestClient(create_app(Settings(model_dir=exported, max_candidates=2000))) as c:
        for user in np.unique(np.asarray(s.row_user))[:20]:
            rows = np.flatnonzero(np.asarray(s.row_user) == user)
            body = {
                "user_id": f"replay-{user}",
                "user_features": entity(contract, "user", s.user_ids[user], s.user_vals[user]),
                "candidates": [
                    {
                        "item_id": int(s.sample_id[r]),
                        "features": entity(contract, "item", s.item_ids[r], s.item_vals[r]),
                    }
                    for r in rows
                ],
            }
            answer = c.post("/rank", json=body).json()
            for it in answer["items"]:
                row = got[it["item_id"]]
                for k in ("pctr", "pcvr", "pctcvr"):
                    assert abs(float(row[k]) - it[k]) < 1e-5, (k, it, row)


def test_items_build_writes_a_table_of_every_item(generated, tmp_path):
    from features.items import ItemTable

    out = tmp_path / "items.npz"
    assert (
        items.main(["build", "--data", str(generated), "--split", "test", "--out", str(out)]) == 0
    )
    table = ItemTable.load(out)
    assert len(table) > 100 and str(generated) in table.source
