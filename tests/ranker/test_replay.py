"""One feature path, proven by replay: `ranker predict` scores a split offline; the same
impressions sent to the running service as id-only requests (the item table and the user store
loaded from the same folder) get the same pctr/pcvr/pctcvr to 1e-5 (on the small generated set:
what this proves needs no more rows). For a model trained without
the combination fields (the way to serve by ids alone), and for one that uses them, with the
caller sending them inline."""

from __future__ import annotations

import csv

import pytest
from support import serving

from loadtest.parts import RedisServer
from ranker import items, predict, replay, users

LIMIT = 1500  # impressions replayed (every one of them is predicted offline); enough sessions
# and users to cross every path (a 4000-row replay took 15 s a case and proved no more)


def _trained(data, tmp_path_factory, name: str, **options):
    """A one-epoch ESMM without the combination fields (the way to serve by ids alone), exported
    as models/esmm/v1 of its own folder. Trained on the small set (the same generator): replay
    proves the served scores equal the batch job's on `small_generated`, whatever the weights."""
    from training.export import export
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp(f"{name}-run")
    without = ("508", "509", "702", "853")
    train(TrainConfig(data=data, out=run, epochs=1, without=without, reference=False, **options))
    out = tmp_path_factory.mktemp(name) / "esmm" / "v1"
    export(run, out)
    return out


@pytest.fixture(scope="module")
def id_only_model(id_only):
    return id_only[2]  # tests/conftest.py: rebuilt by aligned matches


@pytest.fixture(scope="module")
def numeric_model(small_generated, tmp_path_factory):
    """Served by ids alone, with the item table's price as a bucketised feature (plain towers:
    the path proven is the price's; the aligned matches' is id_only_model's)."""
    items = small_generated / "items.parquet"
    return _trained(
        small_generated, tmp_path_factory, "numeric", seed=2, items=items, interactions="none"
    )


@pytest.fixture(scope="module")
def priced_table(small_generated, tmp_path_factory):
    """The small_generated folder's own item table (with prices), built by the command."""
    table = tmp_path_factory.mktemp("priced") / "items.npz"
    args = ["build", "--table", str(small_generated / "items.parquet"), "--out", str(table)]
    assert items.main(args) == 0
    return table


@pytest.fixture(scope="module")
def stores(small_generated, tmp_path_factory):
    """The item table and the user store of the small_generated folder, by the two commands."""
    table = tmp_path_factory.mktemp("stores") / "items.npz"
    assert items.main(["build", "--data", str(small_generated), "--out", str(table)]) == 0
    with RedisServer() as redis:
        assert users.main(["load", "--data", str(small_generated), "--redis", redis.url]) == 0
        yield table, redis.url


@pytest.mark.parametrize(
    "kind", ["without combination fields", "with them inline", "with price as a feature"]
)
def test_id_only_requests_score_as_the_batch_job(
    kind, request, exported, small_generated, stores, tmp_path, capsys
):
    table, store = stores
    model = {
        "without combination fields": lambda: request.getfixturevalue("id_only_model"),
        "with them inline": lambda: exported,
        "with price as a feature": lambda: request.getfixturevalue("numeric_model"),
    }[kind]()
    extra = []
    if kind.endswith("feature"):  # both sides read the prices from the same table
        table = request.getfixturevalue("priced_table")
        extra = ["--items", str(table)]
    pred = tmp_path / "pred.csv"
    args = [
        "--model",
        str(model),
        "--data",
        str(small_generated),
        "--split",
        "test",
        "--out",
        str(pred),
    ]
    assert predict.main([*args, *extra]) == 0
    with serving(
        model_dir=model, item_table=table, user_store=store, user_store_timeout_ms=2_000
    ) as (
        url,
        _,
    ):
        code = replay.main(
            [
                *("--data", str(small_generated), "--split", "test", "--predictions", str(pred)),
                *("--url", url, "--limit", str(LIMIT)),
            ]
        )
    report = capsys.readouterr().out
    assert code == 0, report
    assert f'"impressions": {LIMIT}' in report and '"over_tolerance": 0' in report
    inline = kind.startswith("with them")
    assert (
        "candidates" in str(replay.requests(small_generated, "test", inline, 50, 500)[0][0])
    ) is inline


def test_replay_catches_a_service_that_scores_differently(
    exported, id_only_model, small_generated, stores, tmp_path, capsys
):
    """The check can fail: the id-only model's predictions against the full model served."""
    table, store = stores
    pred = tmp_path / "pred.csv"
    args = ["--model", str(id_only_model), "--data", str(small_generated), "--out", str(pred)]
    assert predict.main(args) == 0
    with serving(
        model_dir=exported, item_table=table, user_store=store, user_store_timeout_ms=2_000
    ) as (
        url,
        _,
    ):
        code = replay.main(
            [
                "--data",
                str(small_generated),
                "--predictions",
                str(pred),
                "--url",
                url,
                "--limit",
                "500",
            ]
        )
    assert code == 1 and '"over_tolerance": 0' not in capsys.readouterr().out


def test_a_model_without_the_combination_fields_skips_them_when_given(id_only_model, samples):
    """A request built for the full model serves the id-only one unchanged: the fields the model
    leaves out are skipped (listed in /v1/model), a name that is no Ali-CCP field is refused."""
    from fastapi.testclient import TestClient
    from support import request_for

    from service.config import Settings
    from service.main import create_app

    contract, s = samples  # the full model's rows: they carry 508, 509, 702, 853
    body, _ = request_for(contract, s, 0)
    given = [c for c in body["candidates"] if set(c["features"]) & {"508", "509", "702", "853"}]
    assert given, "the sample rows carry combination fields"
    stripped = {
        **body,
        "candidates": [
            {**c, "features": {k: v for k, v in c["features"].items() if k < "500" or k == "301"}}
            for c in body["candidates"]
        ],
    }
    with TestClient(create_app(Settings(model_dir=id_only_model))) as c:
        assert c.get("/v1/model").json()["features"]["left_out"] == ["508", "509", "702", "853"]
        a, b = c.post("/rank", json=body), c.post("/rank", json=stripped)
        assert a.status_code == b.status_code == 200
        assert a.json()["items"] == b.json()["items"]
        bad = {**body, "candidates": [{"item_id": 1, "features": {"999": 1}}]}
        r = c.post("/rank", json=bad)
        assert r.status_code == 422 and "999" in r.json()["error"]["message"]


# ---- the spec route -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "which",
    [
        "generator's named tables",
        "generator's, target attention",
        "generator's, exact matches and the wide term",
        "a shop's own tables",
    ],
)
def test_a_spec_models_id_only_requests_score_as_predict(which, request, tmp_path, capsys):
    """`ranker predict --spec` writes one row per event with its ids as the table holds them;
    the same events replayed as id-only requests (user from the embedded store, items from the
    item table, crosses computed online) score the same to 1e-5; with target attention too
    (the user's heaviest list members cached with the user, met by each candidate), and with
    exact matches (the user's lists' ids and weights cached, each candidate's ids searched in
    them) read by the towers and the wide term's regression."""
    import pyarrow.parquet as pq

    spec, model = {
        "generator's named tables": ("spec_generated", "spec_model"),
        "generator's, target attention": ("spec_generated", "attn_spec_model"),
        "generator's, exact matches and the wide term": ("spec_generated", "match_spec_model"),
        "a shop's own tables": ("shop_spec", "shop_model"),
    }[which]
    spec, model = request.getfixturevalue(spec), request.getfixturevalue(model)
    pred, table, store = tmp_path / "pred.csv", tmp_path / "items.npz", tmp_path / "users.npz"
    args = ["--model", str(model), "--spec", str(spec), "--split", "test", "--out", str(pred)]
    assert predict.main(args) == 0
    events = pq.read_table(
        spec.parent / ("events_test.parquet" if which[0] == "g" else "ev_test.parquet")
    )
    with open(pred, newline="") as f:
        rows = list(csv.DictReader(f))
    user, item = ("user_id", "item_id") if which[0] == "g" else ("member", "sku")
    assert len(rows) == len(events)
    assert [r["user_id"] for r in rows] == [str(u) for u in events[user].to_pylist()]
    assert [r["item_id"] for r in rows] == [str(i) for i in events[item].to_pylist()]
    assert items.main(["build", "--spec", str(spec), "--out", str(table)]) == 0
    assert users.main(["build", "--spec", str(spec), "--out", str(store)]) == 0
    with serving(model_dir=model, item_table=table, user_store=str(store)) as (url, _):
        code = replay.main(
            [
                *("--spec", str(spec), "--split", "test", "--predictions", str(pred)),
                *("--url", url, "--limit", str(LIMIT)),
            ]
        )
    report = capsys.readouterr().out
    assert code == 0, report
    replayed = min(LIMIT, len(events))
    assert f'"impressions": {replayed}' in report and '"over_tolerance": 0' in report


def test_predict_refuses_a_spec_that_is_not_the_models(shop_model, spec_generated, capsys):
    with pytest.raises(SystemExit):
        predict.main(["--model", str(shop_model), "--spec", str(spec_generated), "--out", "x.csv"])
    assert "not declared as the model's spec declares it" in capsys.readouterr().err
