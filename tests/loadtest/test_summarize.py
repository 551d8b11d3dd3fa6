"""loadtest/summarize.py: each step's figures come from that step's requests only, the
saturation pick, the plot, and the options `make loadtest` passes."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.summarize import SAMPLES, SCHEDULE, SampleWriter, markdown, summarize

REPO = Path(__file__).resolve().parents[2]
SCHEDULE_ = {"step_users": 2, "step_seconds": 10, "steps": 4}
WARMUP_S = 2.0
# Per step: requests in the measured part of the step and their latency (median ms, sigma of
# the log): very different distributions, so figures accumulated over the run cannot pass.
STEPS = [(300, 10, 0.3), (600, 40, 0.5), (900, 120, 0.4), (1000, 500, 0.3)]
FAILED_IN_STEP_1 = 30


def _run(tmp_path: Path, step_load: bool = True) -> dict:
    """Writes a synthetic run through SampleWriter; returns what each step should report."""
    rng = np.random.default_rng(0)
    seconds = SCHEDULE_["step_seconds"]
    rows, expected = [], []
    for k, (n, median, sigma) in enumerate(STEPS):
        lo, hi = k * seconds + WARMUP_S, (k + 1) * seconds
        end = np.round(rng.uniform(lo + 0.01, hi - 0.01, n), 4)
        lat = np.round(median * np.exp(sigma * rng.standard_normal(n)), 3)
        ok = np.ones(n, bool)
        if k == 1:
            ok[:FAILED_IN_STEP_1] = False
        cands = rng.integers(50, 1000, n)
        rows += list(zip(end, lat, ok, cands, strict=True))
        expected.append(
            {
                "users": (k + 1) * SCHEDULE_["step_users"],
                "latency": lat,
                "requests_per_s": ok.sum() / (hi - lo),
                "candidates_per_s": cands[ok].sum() / (hi - lo),
                "failures": int((~ok).sum()),
            }
        )
        # The warm-up of each step: slow answers to requests sent at the previous load.
        for t in rng.uniform(k * seconds, lo - 0.01, 50):
            rows.append((round(t, 4), 5000.0, True, 100))
    for t in rng.uniform(40.01, 42, 20):  # after the last step, before Locust stops
        rows.append((round(t, 4), 9000.0, True, 100))
    rows.sort()
    w = SampleWriter(tmp_path / SAMPLES)
    for r in rows:
        w.add(*r)
    w.close()
    if step_load:
        (tmp_path / SCHEDULE).write_text(json.dumps(SCHEDULE_))
    return {"steps": expected, "rows": rows}


def test_each_step_has_the_percentiles_of_its_own_requests(tmp_path):
    want = _run(tmp_path)
    got = summarize(tmp_path, p99_ms=400, warmup_s=WARMUP_S)
    assert [s["users"] for s in got["steps"]] == [2, 4, 6, 8]
    for g, e in zip(got["steps"], want["steps"], strict=True):
        assert g["users"] == e["users"]
        for q in (50, 95, 99):
            assert g[f"p{q}_ms"] == pytest.approx(np.percentile(e["latency"], q), rel=1e-9)
        assert g["requests"] == len(e["latency"])
        assert g["failures"] == e["failures"]
        assert g["requests_per_s"] == pytest.approx(e["requests_per_s"])
        assert g["candidates_per_s"] == pytest.approx(e["candidates_per_s"])
    # The data tells per-step figures from figures accumulated since the start apart.
    rows = want["rows"]
    for k in (1, 2, 3):
        upto = [lat for end, lat, *_ in rows if end < (k + 1) * SCHEDULE_["step_seconds"]]
        assert abs(np.percentile(upto, 50) / got["steps"][k]["p50_ms"] - 1) > 0.2


def test_the_whole_run_keeps_every_request(tmp_path):
    rows = _run(tmp_path)["rows"]
    got = summarize(tmp_path, p99_ms=400, warmup_s=WARMUP_S)
    lat = np.array([r[1] for r in rows])
    assert got["requests"] == len(rows)
    assert got["failures"] == FAILED_IN_STEP_1
    for q in (50, 95, 99):
        assert got[f"p{q}_ms"] == pytest.approx(np.percentile(lat, q), rel=1e-9)
    assert got["requests_per_s"] == pytest.approx((len(rows) - FAILED_IN_STEP_1) / rows[-1][0])


def test_saturation_is_the_fastest_step_under_the_p99_bound(tmp_path):
    _run(tmp_path)
    got = summarize(tmp_path, p99_ms=400, warmup_s=WARMUP_S)
    # The last step has the most throughput, but its p99 (about 1 s) breaks the bound.
    assert max(got["steps"], key=lambda s: s["requests_per_s"])["users"] == 8
    assert got["saturation"]["users"] == 6
    assert "at 6 users" in markdown(got)
    assert summarize(tmp_path, p99_ms=5000, warmup_s=WARMUP_S)["saturation"]["users"] == 8
    none = summarize(tmp_path, p99_ms=1, warmup_s=WARMUP_S)
    assert none["saturation"] is None
    assert "none of the steps" in markdown(none)


def test_the_plot_is_written_for_a_step_load_only(tmp_path):
    _run(tmp_path)
    summarize(tmp_path, p99_ms=400, warmup_s=WARMUP_S)
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    closed = tmp_path / "closed"
    closed.mkdir()
    _run(closed, step_load=False)
    got = summarize(closed, p99_ms=400, warmup_s=WARMUP_S)
    assert "steps" not in got and not (closed / "latency.png").exists()


def test_make_loadtest_wires_the_schedule_and_the_summary(tmp_path):
    """The options `make loadtest MODE=step` passes reach Locust and summarize.py's parser."""
    out = subprocess.run(
        [
            "make",
            "-n",
            "loadtest",
            "MODE=step",
            "STEP_USERS=3",
            "STEP_SECONDS=7",
            "STEPS=5",
            "P99_MS=400",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    locust = next(line for line in out.splitlines() if "locust -f locustfile.py" in line)
    for env in (
        "LOADTEST_MODE=step",
        "LOADTEST_STEP_USERS=3",
        "LOADTEST_STEP_SECONDS=7",
        "LOADTEST_STEPS=5",
    ):
        assert env in locust
    line = next(line for line in out.splitlines() if "loadtest/summarize.py" in line)
    args = shlex.split(line)
    args = args[args.index("loadtest/summarize.py") + 1 :]
    args[args.index("--results") + 1] = str(tmp_path)
    assert "--p99-ms" in args and args[args.index("--p99-ms") + 1] == "400"
    _run(tmp_path)
    subprocess.run(
        [sys.executable, "loadtest/summarize.py", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["saturation"]["users"] == 6 and (tmp_path / "latency.png").exists()
    assert "| 6 |" in (tmp_path / "summary.md").read_text()
