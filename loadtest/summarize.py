"""Summarise a Locust run in loadtest/results/: requests/s, candidates/s, p50/p95/p99, failures;
for a step-load run also each step's figures, the saturation point (the highest throughput whose
p99 stays under --p99-ms) and a latency-vs-throughput plot (latency.png).

    python loadtest/summarize.py [--results loadtest/results] [--p99-ms 250] [--step-seconds 20]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(x: str) -> float:
    try:
        return float(x)
    except ValueError:
        return float("nan")


def summarize(results: Path, p99_ms: float, step_seconds: int) -> dict:
    total = next(r for r in _rows(results / "run_stats.csv") if r["Name"] == "Aggregated")
    history = [r for r in _rows(results / "run_stats_history.csv") if r["Name"] == "Aggregated"]
    active = [r for r in history if _num(r["User Count"]) > 0]
    seconds = max(_num(active[-1]["Timestamp"]) - _num(active[0]["Timestamp"]), 1.0)
    cands = json.loads((results / "candidates.json").read_text())
    out = {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "requests_per_s": _num(total["Requests/s"]),
        "candidates_per_s": cands["ok"] / seconds,
        "p50_ms": _num(total["50%"]),
        "p95_ms": _num(total["95%"]),
        "p99_ms": _num(total["99%"]),
    }
    steps = _steps(active, step_seconds)
    if len(steps) > 1:
        out["steps"] = steps
        ok = [s for s in steps if s["p99_ms"] <= p99_ms]
        out["p99_bound_ms"] = p99_ms
        out["saturation"] = max(ok, key=lambda s: s["requests_per_s"]) if ok else None
        _plot(steps, p99_ms, results / "latency.png")
    return out


def _steps(history: list[dict], step_seconds: int) -> list[dict]:
    """The last history row of each user count: Locust's current-window figures at the end of
    the step, when the window holds that step's traffic only."""
    by_users: dict[int, dict] = {}
    for r in history:
        by_users[int(_num(r["User Count"]))] = r
    return [
        {
            "users": u,
            "requests_per_s": _num(r["Requests/s"]),
            "p50_ms": _num(r["50%"]),
            "p99_ms": _num(r["99%"]),
        }
        for u, r in sorted(by_users.items())
    ]


def _plot(steps: list[dict], p99_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["requests_per_s"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, [s["p50_ms"] for s in steps], "o-", label="p50")
    ax.plot(x, [s["p99_ms"] for s in steps], "s-", label="p99")
    ax.axhline(p99_ms, color="grey", ls="--", label=f"p99 bound {p99_ms:.0f} ms")
    for s in steps:
        ax.annotate(
            f"{s['users']}u",
            (s["requests_per_s"], s["p99_ms"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(3, 3),
        )
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("POST /rank: latency vs throughput (step load)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(s: dict) -> str:
    lines = [
        f"{s['requests']} requests, {s['failures']} failed; {s['requests_per_s']:.1f} "
        f"requests/s, {s['candidates_per_s']:,.0f} candidates/s; p50 {s['p50_ms']:.0f} ms, "
        f"p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms."
    ]
    if "steps" in s:
        lines += ["", "| users | requests/s | p50 ms | p99 ms |", "|---|---|---|---|"]
        lines += [
            f"| {x['users']} | {x['requests_per_s']:.1f} | {x['p50_ms']:.0f} | {x['p99_ms']:.0f} |"
            for x in s["steps"]
        ]
        sat = s["saturation"]
        lines += [
            "",
            f"Saturation (highest throughput with p99 <= {s['p99_bound_ms']:.0f} ms): "
            + (
                f"{sat['requests_per_s']:.1f} requests/s at {sat['users']} users."
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
    p.add_argument("--step-seconds", type=int, default=20)
    a = p.parse_args()
    s = summarize(a.results, a.p99_ms, a.step_seconds)
    (a.results / "summary.json").write_text(json.dumps(s, indent=2))
    md = markdown(s)
    (a.results / "summary.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
