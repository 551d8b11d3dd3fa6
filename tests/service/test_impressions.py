"""The impression log (service/impressions.py): what each sampled answer served, in Parquet
files that appear whole, written off the request path; bounded, sampled, never a request's
failure; over HTTP, in process and in a real process stopped by SIGTERM."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from loadtest.parts import ServiceProcess, metric
from service.config import Settings
from service.fusion import FusionParams
from service.impressions import ImpressionLog
from service.main import create_app
from service.response import Served


def served(i: int, n: int = 5, top: int | None = None, ids=None) -> Served:
    rng = np.random.default_rng(i)
    score = rng.random(n)
    order = np.argsort(-score, kind="stable")[:top]
    pctr, pcvr = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
    return Served(
        request_id=f"req-{i}",
        time_s=1_765_000_000.0 + i,
        model_version="esmm/v1",
        model_digest="d" * 16,
        arm=None if i % 2 else "price",  # none without RANKER_ARMS
        fusion=FusionParams("product", 1.0, 1.0, 0.0),
        user_id=i,
        user="store",
        user_cache="hit",
        item_ids=list(range(100 * i, 100 * i + n)) if ids is None else ids,
        order=order,
        pctr=pctr,
        pcvr=pcvr,
        pctcvr=pctr * pcvr,
        score=score,
        price=np.where(np.arange(n) == 0, np.nan, 9.5),
        context=None if i % 2 else {"scene": "search", "hour": i, "tags": [3, 1]},
    )


def offer(log: ImpressionLog, r: Served) -> None:
    """What the request path does with an answer: a draw for the sample, then a put."""
    if log.sampled():
        log.put(r)


def read_all(folder):
    files = sorted(folder.glob("*.parquet"))
    return files, [pq.read_table(f).to_pylist() for f in files]


def test_each_returned_item_is_a_row_in_its_answered_order(tmp_path):
    log = ImpressionLog(tmp_path)
    records = [served(1), served(2, top=2)]
    for r in records:
        offer(log, r)
    log.close()
    files, tables = read_all(tmp_path)
    assert len(files) == 1 and not list(tmp_path.glob(".*"))  # nothing hidden left behind
    rows = tables[0]
    assert [(r["request_id"], r["position"]) for r in rows] == [("req-1", p) for p in range(5)] + [
        ("req-2", 0),
        ("req-2", 1),
    ]
    for rec in records:
        mine = [r for r in rows if r["request_id"] == rec.request_id]
        assert [r["item_id"] for r in mine] == [rec.item_ids[i] for i in rec.order]
        assert [r["score"] for r in mine] == rec.score[rec.order].tolist()
        assert [r["pctr"] for r in mine] == rec.pctr[rec.order].tolist()
        want_price = [None if np.isnan(p) else p for p in rec.price[rec.order].tolist()]
        assert [r["price"] for r in mine] == want_price  # no price: null, never NaN
        assert {
            (r["model_version"], r["arm"], r["user_id"], r["user"], r["user_cache"]) for r in mine
        } == {("esmm/v1", rec.arm, rec.user_id, "store", "hit")}
        assert mine[0]["time"].timestamp() == rec.time_s
        # the request's context features by name, as sent (JSON), on each of its rows
        want = None if rec.context is None else rec.context
        assert {r["context_features"] for r in mine} == {
            None if want is None else json.dumps(want, separators=(",", ":"))
        }


def test_a_sample_keeps_that_share_and_a_full_queue_drops_and_counts(tmp_path):
    draws = iter([0.1, 0.7, 0.3, 0.9])  # kept when under 0.5: the first and third
    log = ImpressionLog(tmp_path / "sampled", sample=0.5, draw=lambda: next(draws))
    for i in range(4):
        offer(log, served(i))
    log.close()
    assert {r["request_id"] for t in read_all(tmp_path / "sampled")[1] for r in t} == {
        "req-0",
        "req-2",
    }
    # the writer held up (its takes from the queue wait): the queue of 2 fills, offers return
    # at once and count what they drop
    dropped, release = [], threading.Event()
    log = ImpressionLog(
        tmp_path / "full", max_queue=2, on_drop=lambda reason, n: dropped.extend([reason] * n)
    )
    take = log.queue.get_nowait
    log.queue.get_nowait = lambda: (release.wait(), take())[1]
    for i in range(10):
        offer(log, served(i))
    assert dropped == ["queue_full"] * 8
    release.set()
    log.close()
    kept = {r["request_id"] for t in read_all(tmp_path / "full")[1] for r in t}
    assert len(kept) + len(dropped) == 10


def test_files_rotate_by_size_and_a_reader_sees_only_whole_ones(tmp_path):
    log = ImpressionLog(tmp_path, rotate_bytes=1)  # each row group closes its file
    written = []
    log.on_written = written.append
    for i in range(3):
        offer(log, served(i))
        deadline = time.monotonic() + 30
        while sum(written) < 5 * (i + 1):
            assert time.monotonic() < deadline, "the writer wrote nothing"
            time.sleep(0.01)
        # whatever is listed is complete, even while the writer goes on
        for f in tmp_path.glob("*.parquet"):
            pq.read_table(f)
    log.close()
    files, tables = read_all(tmp_path)
    assert len(files) == 3 and [len(t) for t in tables] == [5, 5, 5]


def test_a_write_that_fails_loses_its_records_counted_and_the_log_goes_on(tmp_path):
    dropped = []
    log = ImpressionLog(tmp_path, on_drop=lambda reason, n: dropped.extend([reason] * n))
    offer(log, served(1, ids=[1, 2, 3, 4, 5]))
    offer(log, served(2, ids=["a", "b", "c", "d", "e"]))  # a new schema, its own file
    broken = served(3)
    object.__setattr__(broken, "order", np.array([7]))  # out of range: the table fails
    offer(log, broken)
    log.close()
    assert dropped.count("write_error") >= 1
    files, tables = read_all(tmp_path)
    kept = {r["request_id"] for t in tables for r in t}
    # the broken record is lost alone: the open file (req-2's) is closed whole as ever
    assert kept == {"req-1", "req-2"} and dropped == ["write_error"] and len(files) == 2
    texts = [r["item_id"] for t in tables for r in t if r["request_id"] == "req-2"]
    assert texts == [["a", "b", "c", "d", "e"][i] for i in served(2).order]  # ids keep their type


def test_an_unwritable_folder_stops_the_start_naming_it(exported, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = tmp_path / "service.log"
    svc = ServiceProcess(out, model_dir=exported, log_dir=blocker / "logs")
    with pytest.raises(RuntimeError, match="exited"):
        svc.wait_ready()
    assert svc.proc.returncode != 0
    assert f"RANKER_LOG_DIR={blocker / 'logs'}: " in out.read_text()


def test_answers_over_http_are_logged_as_answered(exported, bodies, tmp_path):
    logs = tmp_path / "logs"
    with TestClient(create_app(Settings(model_dir=exported, log_dir=logs))) as c:
        answers = [c.post("/rank", json={**b, "top_k": 3}).json() for b in bodies[:3]]
        assert c.post("/rank", json={"user_id": 1}).status_code == 422  # not an answer
        text = c.get("/metrics").text
    rows = [r for t in read_all(logs)[1] for r in t]
    assert len(rows) == 9 and 'ranker_log_dropped_total{reason="queue_full"}' not in text
    for a in answers:
        mine = [r for r in rows if r["request_id"] == a["request_id"]]
        assert [r["item_id"] for r in mine] == [i["item_id"] for i in a["items"]]
        assert [r["score"] for r in mine] == [i["score"] for i in a["items"]]
        assert [np.float32(r["pcvr"]) for r in mine] == [np.float32(i["pcvr"]) for i in a["items"]]
        assert {r["model_version"] for r in mine} == {a["model_version"]}
        assert {r["context_features"] for r in mine} == {None}  # the request sent none
        assert {(r["policy"], r["a"], r["b"], r["c"]) for r in mine} == {
            tuple(a["fusion"].values())
        }


def test_sigterm_leaves_only_complete_files_holding_every_answer(exported, bodies, tmp_path):
    """A real process: answers written to a file still open are not listed as a file; the
    answers still queued when SIGTERM comes are written, and the file is closed whole."""
    logs = tmp_path / "logs"
    svc = ServiceProcess(model_dir=exported, access_log=False, log_dir=logs).wait_ready()

    def answer(some) -> list[str]:
        return [
            httpx.post(f"{svc.url}/rank", json={**b, "top_k": 4}, timeout=30).json()["request_id"]
            for b in some
        ]

    try:
        ids = answer(bodies[:10])
        deadline = time.monotonic() + 30
        while metric(svc.url, "ranker_log_written_rows_total") < 40:  # one row group written
            assert time.monotonic() < deadline, "the writer wrote nothing"
            time.sleep(0.05)
        assert not list(logs.glob("*.parquet"))  # its file still open: not there to read
        ids += answer(bodies[10:20])  # queued, or being built, when SIGTERM comes
    finally:
        assert svc.stop() == 0
    assert not list(logs.glob(".*"))  # closed and renamed on SIGTERM
    rows = [r for t in read_all(logs)[1] for r in t]
    assert sorted({r["request_id"] for r in rows}) == sorted(ids) and len(rows) == 80
