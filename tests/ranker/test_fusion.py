"""`ranker fusion evaluate`: a grid of fusion exponents scored on a split's requests, through
the service's engine and fusion, each metric checked against a plain loop over requests."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from features import spec as S
from ranker import fusion
from ranker.predict import predict_spec
from service import fusion as service_fusion
from training.metrics import auc


def test_the_grid_is_read_as_the_issue_writes_it():
    assert fusion.parse_grid("a=0.5,1,2,b=1,c=0,0.5") == {
        "a": [0.5, 1.0, 2.0],
        "b": [1.0],
        "c": [0.0, 0.5],
    }
    assert fusion.parse_grid("c=0, 1, 1") == {"a": [1.0], "b": [1.0], "c": [0.0, 1.0]}
    for bad, says in (
        ("d=1", "not an exponent"),
        ("1,a=2", "before any"),
        ("a=1,a=2", "twice"),
        ("a=x", "not a number"),
        ("a=9", "[-8, 8]"),
        ("a=nan", "[-8, 8]"),
    ):
        with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
            fusion.parse_grid(bad)


def test_a_perfect_conversion_model_ranks_every_purchase_first():
    """pCVR 0.9 on exactly the converted rows: ranked by it, each request's conversion AUC is
    1 and its GMV-NDCG 1; ranked by pCTR alone (b = 0, pCTR uninformative) neither is."""
    rng = np.random.default_rng(0)
    n = 2000
    conversion = rng.random(n) < 0.1
    split = {
        "list": rng.integers(0, 100, n),
        "click": conversion | (rng.random(n) < 0.3),
        "conversion": conversion,
        "price": rng.uniform(1, 50, n),
        "pctr": rng.uniform(0.2, 0.25, n).astype(np.float32),  # uninformative, and narrow
        "pcvr": np.where(conversion, 0.9, 0.1).astype(np.float32),
    }
    grid = {"a": [1.0], "b": [0.0, 1.0], "c": [0.0]}
    rows = {(r["b"], r["c"]): r for r in fusion.evaluate(split, grid, "product", 5)}
    assert rows[1.0, 0.0]["baseline"] and not rows[0.0, 0.0]["baseline"]
    assert rows[1.0, 0.0]["conversion_auc"] == 1.0 and rows[1.0, 0.0]["gmv_ndcg"] < 1.0
    assert rows[0.0, 0.0]["conversion_auc"] < 0.6
    # with the price in the score too (c = 1 beside b = 1), purchases still come first, and
    # the dearest first: GMV-NDCG is 1
    grid = {"a": [0.0], "b": [8.0], "c": [1.0]}
    (_, priced) = fusion.evaluate(split, grid, "product", 5)  # the pCTCVR row comes first
    assert priced["gmv_ndcg"] == pytest.approx(1.0) and priced["conversion_auc"] == 1.0


def test_evaluate_on_a_trained_model_equals_a_loop_over_its_requests(
    spec_model, spec_generated, tmp_path
):
    out = tmp_path / "fusion"
    grid = "a=1,b=0.5,1,c=0,1"
    assert (
        fusion.main(
            ["evaluate", "--model", str(spec_model), "--spec", str(spec_generated)]
            + ["--grid", grid, "--k", "5", "--out", str(out)]
        )
        == 0
    )
    result = json.loads((out / "fusion.json").read_text())
    assert (out / "fusion.png").stat().st_size > 0
    md = (out / "fusion.md").read_text()
    # the baseline's row (marked best too where it is the best point)
    assert re.search(r"\| product \(pCTCVR, the default(; best)?\) \| 1 \| 1 \| 0 \|", md)
    assert "GMV-NDCG@5" in md
    assert len(result["points"]) == 4 and result["lists_by"] == "request_id"
    # the same figures from the plain parts: predict, the events' labels, the items' prices
    spec = S.load(spec_generated)
    keys, probs = predict_spec(spec_model, spec_generated, "test")
    events = pq.read_table(spec.table_path("events", "test")).to_pydict()
    items = pq.read_table(spec.table_path("items")).to_pydict()
    price_of = dict(zip(items[spec.keys["item"]], items[spec.price], strict=True))
    price = np.array([price_of[i] for i in keys["item_id"]], dtype=np.float64)
    click = np.array(events[spec.labels["click"]], dtype=bool)
    conv = np.array(events[spec.labels["conversion"]], dtype=bool) & click
    lists = np.array(keys["request_id"])
    assert result["lists"] == len(np.unique(lists)) and result["left_out_requests"] == 0
    for point in result["points"]:
        params = service_fusion.FusionParams("product", point["a"], point["b"], point["c"])
        score = service_fusion.score(params, probs["pctr"], probs["pcvr"], price)
        aucs, weights, ndcg = [], [], []
        for r in np.unique(lists):
            rows = np.flatnonzero(lists == r)
            a = auc(conv[rows], score[rows])
            if not np.isnan(a):
                aucs.append(a)
                weights.append(len(rows))
            top = rows[np.argsort(-score[rows], kind="stable")][:5]
            gain = price * conv
            ideal = sorted(gain[rows], reverse=True)[:5]
            if sum(ideal) > 0:
                dcg = sum(gain[i] / np.log2(p + 2) for p, i in enumerate(top))
                ndcg.append(dcg / sum(g / np.log2(p + 2) for p, g in enumerate(ideal)))
        assert point["conversion_auc"] == pytest.approx(np.average(aucs, weights=weights))
        assert point["gmv_ndcg"] == pytest.approx(np.mean(ndcg))


def test_a_spec_without_a_price_is_refused_by_name(spec_model, spec_generated, tmp_path, capsys):
    text = spec_generated.read_text()
    assert "\nprice: price" in text
    nameless = spec_generated.with_name("no-price.yaml")
    nameless.write_text(text.replace("\nprice: price", "\n"))
    with pytest.raises(SystemExit) as e:
        fusion.main(["evaluate", "--model", str(spec_model), "--spec", str(nameless)])
    assert e.value.code == 2 and "names no price column" in capsys.readouterr().err
