"""Summarise a run of locustfile.py from its raw samples, one per request.

The locustfile records every request as it completes (Locust's request event) in
results/requests.csv: its end in seconds since the test started, its latency in ms, ok (1/0)
and its number of candidates. A step-load run also writes its schedule to results/steps.json
(users added per step, seconds per step, steps). From these this script writes
summary.{json,md} and, for a step-load run, latency.png:

- the whole run: requests, failures, requests/s, candidates/s, p50/p95/p99;
- each step from that step's requests only: step k (from 0) holds the requests that ended in
  [k * seconds + warm-up, (k + 1) * seconds), at (k + 1) * users closed-loop users. The first
  --warmup-s seconds of every step are skipped: requests sent at the previous load finish then,
  and the new users start;
- the saturation point: the step with the highest requests/s whose p99 stays under --p99-ms;
- latency.png: p50/p95/p99 of each step against the offered load (users), which grows with
  every step, so the curve cannot fold back past saturation as one drawn against throughput
  does; throughput per step in a second panel.

requests/s and candidates/s count successful requests only (a refusal is not throughput); the
percentiles cover every answered request, failed ones too. Locust's own CSV is not read: its
history holds percentiles accumulated since the start of the run (without --csv-full-history),
not a step's.

    python loadtest/summarize.py [--results loadtest/results] [--p99-ms 250] [--warmup-s 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SAMPLES = "requests.csv"
SCHEDULE = "steps.json"
COLUMNS = ("end_s", "latency_ms", "ok", "candidates")
PERCENTILES = (50, 95, 99)


class SampleWriter:
    """Writes results/requests.csv, one row per request; the locustfile feeds it."""

    def __init__(self, path: Path):
        self.file = open(path, "w")  # noqa: SIM115 (open for the whole run, closed by close())
        self.file.write(",".join(COLUMNS) + "\n")

    def add(self, end_s: float, latency_ms: float, ok: bool, candidates: int) -> None:
        self.file.write(f"{end_s:.4f},{latency_ms:.3f},{int(ok)},{candidates}\n")

    def close(self) -> None:
        self.file.close()


def load(results: Path) -> dict[str, np.ndarray]:
    """The samples as one array per column."""
    path = results / SAMPLES
    if not path.exists():
        raise SystemExit(f"{path} is missing: it is written by a run of loadtest/locustfile.py")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if data.size == 0:
        raise SystemExit(f"{path}: no request was recorded")
    return {name: data[:, i] for i, name in enumerate(COLUMNS)}


def figures(s: dict[str, np.ndarray], seconds: float) -> dict:
    """Counts, rates over `seconds` and latency percentiles of the samples `s` (not empty)."""
    ok = s["ok"] > 0
    pct = np.percentile(s["latency_ms"], PERCENTILES)
    return {
        "requests": int(ok.size),
        "failures": int((~ok).sum()),
        "requests_per_s": float(ok.sum() / seconds),
        "candidates_per_s": float(s["candidates"][ok].sum() / seconds),
        **{f"p{q}_ms": float(v) for q, v in zip(PERCENTILES, pct, strict=True)},
    }


def per_step(s: dict[str, np.ndarray], schedule: dict, warmup_s: float) -> list[dict]:
    """Each step's figures from the requests that ended within it, after its warm-up; a step
    with no such request (a run stopped early) is left out."""
    seconds = schedule["step_seconds"]
    if not 0 <= warmup_s < seconds:
        raise SystemExit(f"--warmup-s {warmup_s} must be at least 0 and below a step ({seconds} s)")
    out = []
    for k in range(schedule["steps"]):
        lo, hi = k * seconds + warmup_s, (k + 1) * seconds
        m = (s["end_s"] >= lo) & (s["end_s"] < hi)
        if m.any():
            step = {n: v[m] for n, v in s.items()}
            out.append({"users": (k + 1) * schedule["step_users"], **figures(step, hi - lo)})
    return out


def summarize(results: Path, p99_ms: float, warmup_s: float) -> dict:
    s = load(results)
    # The whole run: from the test's start to its last answer.
    out = figures(s, seconds=max(float(s["end_s"].max()), 1e-3))
    if (results / SCHEDULE).exists():
        schedule = json.loads((results / SCHEDULE).read_text())
        out["steps"] = per_step(s, schedule, warmup_s)
        out["warmup_s"] = warmup_s
        out["p99_bound_ms"] = p99_ms
        under = [x for x in out["steps"] if x["p99_ms"] <= p99_ms]
        out["saturation"] = max(under, key=lambda x: x["requests_per_s"]) if under else None
        _plot(out["steps"], p99_ms, out["saturation"], results / "latency.png")
    return out


def _plot(steps: list[dict], p99_ms: float, saturation: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["users"] for s in steps]
    fig, (lat, thr) = plt.subplots(
        2, 1, sharex=True, figsize=(7, 6.5), gridspec_kw={"height_ratios": [3, 2]}
    )
    for q, marker in zip(PERCENTILES, "o^s", strict=True):
        lat.plot(x, [s[f"p{q}_ms"] for s in steps], marker + "-", label=f"p{q}")
    lat.axhline(p99_ms, color="grey", ls="--", label=f"p99 bound {p99_ms:.0f} ms")
    thr.plot(x, [s["requests_per_s"] for s in steps], "o-", color="tab:green")
    if saturation is not None:
        label = f"saturation: {saturation['requests_per_s']:.1f} req/s, {saturation['users']} users"
        for ax in (lat, thr):
            ax.axvline(saturation["users"], color="tab:red", ls=":", lw=1, label=label)
        thr.legend(fontsize=8)
    lat.set_ylabel("latency (ms)")
    lat.set_title("POST /rank by step of a step load")
    lat.legend(fontsize=8)
    thr.set_xticks(x)
    thr.set_ylabel("successful requests/s")
    thr.set_xlabel("offered load: closed-loop users in the step")
    for ax in (lat, thr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(s: dict) -> str:
    lines = [
        f"{s['requests']} requests, {s['failures']} failed; {s['requests_per_s']:.1f} "
        f"requests/s, {s['candidates_per_s']:,.0f} candidates/s; p50 {s['p50_ms']:.0f} ms, "
        f"p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms."
    ]
    if "steps" in s:
        lines += [
            "",
            f"Each step from its own requests (the first {s['warmup_s']:g} s of a step skipped):",
            "",
            "| users | requests/s | candidates/s | p50 ms | p95 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['users']} | {x['requests_per_s']:.1f} | {x['candidates_per_s']:,.0f} "
            f"| {x['p50_ms']:.0f} | {x['p95_ms']:.0f} | {x['p99_ms']:.0f} | {x['failures']} |"
            for x in s["steps"]
        ]
        sat = s["saturation"]
        lines += [
            "",
            f"Saturation (highest throughput with p99 <= {s['p99_bound_ms']:.0f} ms): "
            + (
                f"{sat['requests_per_s']:.1f} requests/s ({sat['candidates_per_s']:,.0f} "
                f"candidates/s) at {sat['users']} users, p99 {sat['p99_ms']:.0f} ms."
                if sat
                else "none of the steps stayed under the bound."
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", type=Path, default=Path("loadtest/results"))
    p.add_argument("--p99-ms", type=float, default=250.0)
    p.add_argument("--warmup-s", type=float, default=2.0, help="skipped at each step's start")
    a = p.parse_args()
    s = summarize(a.results, a.p99_ms, a.warmup_s)
    (a.results / "summary.json").write_text(json.dumps(s, indent=2))
    md = markdown(s)
    (a.results / "summary.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
