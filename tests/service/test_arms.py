"""Arms (service/arms.py): salted sticky buckets with their shares, a strict config, the
sample-ratio check, and over HTTP the arm's fusion, its name in the answer and the log, reloads
that never serve a broken config."""

from __future__ import annotations

import logging
import math
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from loadtest.parts import ServiceProcess
from service import arms as A
from service.config import Settings
from service.main import create_app
from service.request import Rules

RULES = Rules.from_settings(Settings())
THREE = """
salt: exp-1
arms:
  - {name: control, share: 0.5}
  - {name: price, share: 0.3, fusion: {c: 0.5}}
  - {name: clicks, share: 0.2, fusion: {a: 2, b: 0.5}}
"""


def config(tmp_path, text: str, name: str = "arms.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_users_fall_in_each_arm_by_its_share_and_stay_there(tmp_path):
    path = config(tmp_path, THREE)
    arms = A.Arms.load(path, RULES)
    users = range(10_000)
    got = [arms.assign(u).name for u in users]
    n = len(got)
    for arm in arms.arms:
        seen = got.count(arm.name)
        bound = 4 * math.sqrt(n * arm.share * (1 - arm.share))  # binomial, 4 sigma
        assert abs(seen - n * arm.share) <= bound, (arm.name, seen)
    # sticky: the same users, a config loaded anew (a restart, another replica)
    again = A.Arms.load(path, RULES)
    assert [again.assign(u).name for u in users] == got
    assert arms.users == [got.count(a.name) for a in arms.arms]  # each user counted once
    arms.assign(5)
    assert sum(arms.users) == n
    # 5 and "5" are two users; another salt splits users independently of this one
    assert A.bucket("exp-1", 5) != A.bucket("exp-1", "5")
    other = A.Arms.load(config(tmp_path, THREE.replace("exp-1", "exp-2"), "b.yaml"), RULES)
    both = sum(
        g == "control" and other.assign(u).name == "control"
        for u, g in zip(users, got, strict=True)
    )
    assert abs(both - n * 0.25) <= 4 * math.sqrt(n * 0.25 * 0.75)  # 0.5 x 0.5: independent
    # and the fusion of each arm is the default with its overrides
    assert [(a.fusion.a, a.fusion.b, a.fusion.c) for a in arms.arms] == [
        (1.0, 1.0, 0.0),
        (1.0, 1.0, 0.5),
        (2.0, 0.5, 0.0),
    ]


@pytest.mark.parametrize(
    "text, says",
    [
        ("arms: [{name: a, share: 1}]", "salt: a non-empty text"),
        ("salt: s\narms: []", "at least one arm"),
        ("salt: s\narms: [{name: a, share: 0.5}, {name: b, share: 0.4}]", "sum to 0.9"),
        ("salt: s\narms: [{name: a, share: 0.5}, {name: a, share: 0.5}]", "given twice"),
        ("salt: s\narms: [{name: 'a b', share: 1}]", "arms[0].name"),
        ("salt: s\narms: [{name: a, share: 0}]", "arms[0].share"),
        ("salt: s\narms: [{name: a, share: true}]", "arms[0].share"),
        ("salt: s\narms: [{name: a, share: 1, fusion: {c: 9}}]", "arms[0].fusion.c=9"),
        ("salt: s\narms: [{name: a, share: 1, fusion: {d: 1}}]", "unknown key 'd'"),
        ("salt: s\narms: [{name: a, share: 1, fusion: {policy: max}}]", "fusion.policy"),
        ("salt: s\narms: [{name: a, share: 1, model: /m/v2}]", "arms[0].model: a version"),
        ("salt: s\narms: [{name: a, share: 1, model: ../v2}]", "arms[0].model: a version"),
        ("salt: s\narms: [{name: a, share: 1, shadow: true}]", "unknown key 'shadow'"),
        ("salt: s\narms: [{name: a, share: 1}]\nshadow: {model: m}", None),
        ("salt: s\narms: [{name: a, share: 1}]\nshadow: {model: m, sample: 2}", "shadow.sample"),
        ("salt: s\narms: [{name: a, share: 1}]\nshadow: {sample: 0.5}", "shadow.model"),
        ("salt: s\narms: [{name: a, share: 1}]\nshadow: {model: m, why: 1}", "unknown key 'why'"),
        ("salt: s\nseed: 1\narms: [{name: a, share: 1}]", "unknown key 'seed'"),
        ("salt: s\narms: [{name: a, share: 1}", "not YAML"),
    ],
)
def test_a_config_that_cannot_be_served_is_refused_naming_the_key(tmp_path, text, says):
    if says is None:  # (a case that loads: the shadow's sample defaults to every answer)
        assert A.Arms.load(config(tmp_path, text), RULES).shadow == A.Shadow("m", 1.0)
        return
    with pytest.raises(A.ArmsError) as e:
        A.Arms.load(config(tmp_path, text), RULES)
    assert says in str(e.value)


def test_the_sample_ratio_check_flags_users_that_depart_from_the_shares(tmp_path, caplog):
    half = "salt: s\narms: [{name: a, share: 0.5}, {name: b, share: 0.5}]"
    arms = A.Arms.load(config(tmp_path, half), RULES)
    for u in range(4_000):
        arms.assign(u)
    assert arms.check() > A.SRM_P and not arms.mismatch
    # only arm a's users reach the service from now on (a cache in front serving arm b)
    skewed = A.Arms.load(config(tmp_path, half), RULES)
    caplog.set_level(logging.WARNING, logger="service.arms")
    in_a = [u for u in range(20_000) if A.bucket("s", u) < 0.5][:1_500]
    in_b = [u for u in range(20_000) if A.bucket("s", u) >= 0.5][:500]
    for k in range(500):  # three of a's users for each of b's
        for u in (*in_a[3 * k : 3 * k + 3], in_b[k]):
            skewed.assign(u)
    assert skewed.check() < 1e-6 and skewed.mismatch
    # flagged at the first check with enough users, with the shares seen
    assert "sample ratio mismatch over 1000 users" in caplog.text
    assert "a 0.750 (configured 0.5), b 0.250 (configured 0.5)" in caplog.text


def test_chi_square_tail_matches_its_table():
    for df, x in ((1, 3.841), (2, 5.991), (3, 7.815), (4, 9.488), (5, 11.070)):
        assert A.chi2_sf(x, df) == pytest.approx(0.05, abs=2e-4)
    assert A.chi2_sf(13.816, 2) == pytest.approx(0.001, abs=1e-5)


def test_answers_name_their_arm_and_are_ranked_by_its_fusion(exported, bodies, tmp_path):
    path = config(
        tmp_path,
        "salt: s\narms: [{name: a, share: 0.5}, {name: b, share: 0.5, fusion: {a: 0, b: 2}}]",
    )
    logs = tmp_path / "logs"
    settings = Settings(model_dir=exported, arms=path, log_dir=logs, reload_poll_s=0)
    arms = A.Arms.load(path, Rules.from_settings(settings))
    with TestClient(create_app(settings)) as c:
        answers = []
        for i, b in enumerate(bodies[:8]):
            body = {**b, "user_id": 1000 + i}
            got = c.post("/rank", json=body).json()
            assert got["arm"] == arms.assign(1000 + i).name
            want = {"a": (1.0, 1.0), "b": (0.0, 2.0)}[got["arm"]]
            assert (got["fusion"]["a"], got["fusion"]["b"]) == want
            for item in got["items"]:
                assert item["score"] == pytest.approx(
                    item["pctr"] ** want[0] * item["pcvr"] ** want[1], rel=1e-6
                )
            answers.append(got)
        # a request's own fusion still wins over its arm's
        own = c.post("/rank", json={**bodies[0], "user_id": 1000, "fusion": {"b": 3}}).json()
        assert own["fusion"]["b"] == 3.0 and own["arm"] == answers[0]["arm"]
        # a request refused after its arm was drawn is no answer of that arm
        bogus = [{"item_id": 1, "features": {"nope": 1}}]  # refused by the model's encoder
        refused = c.post("/rank", json={**bodies[0], "user_id": 1000, "candidates": bogus})
        assert refused.status_code == 422 and "nope" in refused.text
        metrics = c.get("/metrics").text
    assert {a["arm"] for a in answers} == {"a", "b"}
    for name in ("a", "b"):
        served = sum(a["arm"] == name for a in answers) + (own["arm"] == name)
        assert f'ranker_arm_answers_total{{arm="{name}"}} {served:.1f}' in metrics
    rows = [r for f in logs.glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    by_request = {r["request_id"]: r["arm"] for r in rows}
    assert all(by_request[a["request_id"]] == a["arm"] for a in answers)


def test_a_config_that_fails_at_start_stops_it_naming_ranker_arms(exported, tmp_path):
    out = tmp_path / "service.log"
    svc = ServiceProcess(out, model_dir=exported, arms=config(tmp_path, "salt: s\narms: []"))
    with pytest.raises(RuntimeError, match="exited"):
        svc.wait_ready()
    assert "RANKER_ARMS: " in out.read_text() and "at least one arm" in out.read_text()


def test_replicas_agree_and_a_changed_file_reloads_while_a_broken_one_is_refused(
    exported, bodies, tmp_path
):
    """Two processes on one config put each user in the same arm; a new config is served once
    its file changes; a broken one is refused and the one before keeps serving."""
    path = config(tmp_path, "salt: s\narms: [{name: a, share: 0.5}, {name: b, share: 0.5}]")
    procs = [
        ServiceProcess(model_dir=exported, arms=path, reload_poll_s=0.2, access_log=False)
        for _ in range(2)
    ]
    try:
        for p in procs:
            p.wait_ready()

        def arms_of(url: str) -> list:
            return [
                httpx.post(f"{url}/rank", json={**bodies[0], "user_id": u}, timeout=30).json()[
                    "arm"
                ]
                for u in range(20)
            ]

        first = arms_of(procs[0].url)
        assert arms_of(procs[1].url) == first and set(first) == {"a", "b"}
        path.write_text("salt: s\narms: [{name: only, share: 1}]")
        deadline = time.monotonic() + 20
        while set(arms_of(procs[0].url)) != {"only"}:
            assert time.monotonic() < deadline, "the new config was not served"
            time.sleep(0.2)
        path.write_text("salt: s\narms: [{name: x, share: 0.7}]")  # shares sum to 0.7
        time.sleep(1.0)  # several polls
        assert set(arms_of(procs[0].url)) == {"only"}  # the old one serves
        text = httpx.get(f"{procs[0].url}/metrics").text
        assert 'ranker_arms_reloads_total{outcome="refused"} 1.0' in text
        assert 'ranker_arms_reloads_total{outcome="ok"} 1.0' in text
    finally:
        for p in procs:
            p.stop()
    assert np.all([p.proc.returncode == 0 for p in procs])


@pytest.fixture
def two_versions(exported, second_model, tmp_path):
    """A model folder holding both versions: esmm/v1 (the newest by name: the one served) and
    esmm/b (the second model: its CTR scores differ)."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(exported, root / "esmm" / "v1")
    shutil.copytree(second_model, root / "esmm" / "b")
    return root


def test_an_arm_serves_its_model_and_a_shadow_scores_every_answer_into_the_log(
    two_versions, bodies, tmp_path
):
    path = config(
        tmp_path,
        "salt: s\narms: [{name: a, share: 0.5}, {name: b, share: 0.5, model: esmm/b}]\n"
        "shadow: {model: esmm/b, sample: 1}\n",
    )
    logs = tmp_path / "logs"
    settings = Settings(model_dir=two_versions, arms=path, log_dir=logs, reload_poll_s=0)
    arms = A.Arms.load(path, Rules.from_settings(settings))
    in_a = [u for u in range(100) if arms.assign(u).name == "a"][:4]
    in_b = [u for u in range(100) if arms.assign(u).name == "b"][:4]
    with TestClient(create_app(settings)) as c:
        answers = {}
        for k, b in enumerate(bodies[:4]):  # each body for a user of a and one of b
            for u in (in_a[k], in_b[k]):
                got = c.post("/rank", json={**b, "user_id": u}).json()
                assert got["model_version"] == {"a": "esmm/v1", "b": "esmm/b"}[got["arm"]]
                answers[got["request_id"]] = (k, got)
        # the shadow scores off the request path, after the answer: wait for the last one
        ok, deadline = 'ranker_shadow_answers_total{outcome="ok"} 8.0', time.monotonic() + 10
        while ok not in (metrics := c.get("/metrics").text) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ok in metrics
    by_b = {
        k: {i["item_id"]: i for i in g["items"]} for k, g in answers.values() if g["arm"] == "b"
    }
    rows = [r for f in logs.glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert {r["request_id"] for r in rows} == set(answers)
    for r in rows:
        k, got = answers[r["request_id"]]
        # the shadow scored what esmm/b answers for the same request, beside what was served
        assert r["shadow_model_version"] == "esmm/b"
        b_item = by_b[k][r["item_id"]]
        assert r["shadow_pctr"] == pytest.approx(b_item["pctr"], rel=1e-6)
        assert r["shadow_score"] == pytest.approx(b_item["score"], rel=1e-6)
        if got["arm"] == "a":
            assert r["pctr"] != pytest.approx(r["shadow_pctr"], rel=1e-3)


@pytest.mark.parametrize(
    "text, says",
    [
        (
            "salt: s\narms: [{name: a, share: 1, model: esmm/none}]",
            "model esmm/none: path 'esmm/none' names no folder",
        ),
        ("salt: s\narms: [{name: a, share: 1}]\nshadow: {model: esmm/b}", "RANKER_LOG_DIR"),
    ],
)
def test_an_arms_model_that_cannot_be_served_stops_the_start(two_versions, tmp_path, text, says):
    out = tmp_path / "service.log"
    svc = ServiceProcess(out, model_dir=two_versions, arms=config(tmp_path, text))
    with pytest.raises(RuntimeError, match="exited"):
        svc.wait_ready()
    assert "RANKER_ARMS: " in out.read_text() and says in out.read_text()


def test_a_config_naming_a_new_model_reloads_and_one_naming_a_broken_one_is_refused(
    two_versions, bodies, tmp_path
):
    """The watcher loads the model a new config names before installing it; a config naming a
    folder that is no model is refused, and the config and models before keep serving."""
    from support import serving

    path = config(tmp_path, "salt: s\narms: [{name: a, share: 1}]")
    (two_versions / "esmm" / "empty").mkdir()
    with serving(model_dir=two_versions, arms=path, reload_poll_s=0.1) as (url, _):

        def version() -> str:
            got = httpx.post(f"{url}/rank", json={**bodies[0], "user_id": 7}, timeout=30).json()
            return got["model_version"]

        assert version() == "esmm/v1"
        path.write_text("salt: s\narms: [{name: a, share: 1, model: esmm/b}]")
        deadline = time.monotonic() + 30
        while version() != "esmm/b":
            assert time.monotonic() < deadline, "the arm's model was not served"
            time.sleep(0.1)
        path.write_text("salt: s\narms: [{name: a, share: 1, model: esmm/empty}]")
        time.sleep(1.0)  # several polls
        assert version() == "esmm/b"  # the old config and its model serve
        text = httpx.get(f"{url}/metrics").text
        assert 'ranker_arms_reloads_total{outcome="refused"} 1.0' in text
