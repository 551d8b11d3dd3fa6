"""The serving benchmark's figures as Markdown (OUT/serve.md and the README's block between the
`<!-- bench:serving -->` markers): what loadtest/bench.py measured, rendered, nothing measured
here."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"(<!-- bench:serving -->\n).*?(<!-- /bench:serving -->)", re.S)
P99_BOUND_MS = 50.0
OVERLOAD = 2.0  # the open-loop overload step: this many times the peak's requests/s
VS_STAGES = ("decode_ms", "encode_ms", "ids_decode_ms", "ids_encode_ms", "stored_user_ms")


ROWS = (  # the id path first: it is how a recommender calls a ranker
    ("service_ids_hit", "/rank by ids (both stores), user cache hit"),
    ("service_ids_hit_workers", "the same, RANKER_WORKERS={workers}"),
    ("service_ids_miss", "/rank by ids (both stores), user cache miss"),
    ("service_hit", "/rank by features, user cache hit"),
    ("service_miss", "/rank by features, user cache miss"),
    ("naive", "naive: full graph per request, tiled, no cache/batching"),
)


def markdown(r: dict) -> str:
    c, p = r["ceiling"], r["parsing"]
    behaviour = r["behaviour_ids"]
    levels = ", ".join(map(str, r["concurrency_levels"]))
    driver = next(iter(r[k]["driver"] for k, _ in ROWS if "driver" in r.get(k, {})), "python")
    how = {
        "wrk": "wrk (a C load generator, `loadtest/wrk.py`), one thread",
        "python": "the Python driver (`loadtest/load.py`; wrk not installed)",
    }[driver]
    lines = [
        f"{r['candidates']} candidates per request (`loadtest/traffic.py`), {len(behaviour)} "
        f"users of {min(behaviour)}-{max(behaviour)} behaviour ids; each path closed-loop at "
        f"{levels} callers ({r['seconds']:g} s each), then open-loop (Poisson arrivals) at half "
        f"its peak and at {OVERLOAD:g}x it; load from {how} on the same {r['cpus']}-core "
        f"machine; model {r['model']}. User tower {c['user_tower_ms']:.2f} ms, full graph at "
        f"{r['candidates']} rows {c['full_graph_ms']:.2f} ms.",
        "",
        f"| path | peak candidates/s (callers) | p99 at peak ms | candidates/s at p99 <= "
        f"{P99_BOUND_MS:.0f} ms (callers) | half of peak, open loop: achieved of offered, "
        f"p50 / p99 / p999 ms | {OVERLOAD:g}x peak, open loop: goodput of peak, p99 ms | "
        "server cores at peak | cache hits |",
        "|---|---|---|---|---|---|---|---|",
        f"| item scorer in-process, one thread (raw ceiling) | {c['candidates_per_s']:,.0f} "
        f"| {c['item_scorer_ms']:.2f} ms per run |  |  |  |  |  |",
    ]
    failed, refused = [], []
    for key, label in ROWS:
        if key not in r:  # (a run before the row existed)
            continue
        label = label.format(workers=r.get("workers"))
        x = r[key]
        pk, ub, hf = x["peak"], x["under_bound"], x["half"]
        ov = x.get("overload")
        under = "none" if ub is None else f"{ub['candidates_per_s']:,.0f} ({ub['concurrency']})"
        offered = hf.get("rate") or 0.0
        achieved = hf.get("accepted_per_s", 0.0) / offered if offered else 0.0
        goodput = (
            "-"
            if ov is None
            else f"{ov['candidates_per_s'] / max(pk['candidates_per_s'], 1e-9):.0%}"
        )
        over_p99 = "-" if ov is None else _ms(ov["accepted_p99_ms"])
        cores = pk.get("server_cores")
        lines.append(
            f"| {label} | {pk['candidates_per_s']:,.0f} ({pk['concurrency']}) "
            f"| {_ms(pk['accepted_p99_ms'])} | {under} "
            f"| {achieved:.0%}, {_ms(hf['accepted_p50_ms'])} / {_ms(hf['accepted_p99_ms'])} / "
            f"{_ms(hf.get('p999_ms'))} | {goodput}, {over_p99} "
            f"| {'-' if cores is None else f'{cores:.2f}'} | {pk['hit_rate']:.0%} |"
        )
        for run in [*x["levels"].values(), hf]:
            bad = {k: v for k, v in run["by_status"].items() if k != "200"}
            if bad:
                failed.append(f"{label}: {sum(bad.values())} of {run['requests']} not 200 ({bad})")
        if ov is not None:
            bad = {k: v for k, v in ov["by_status"].items() if k != "200"}
            if bad:
                fast = ov.get("refused_fast_share")
                within = "" if fast is None else f", {fast:.0%} of the 503s answered within 10 ms"
                refused.append(f"{label}: {sum(bad.values())} of {ov['requests']} ({bad}{within})")
    for key, title in (("service_ids_hit", "one process"), ("service_ids_hit_workers", None)):
        if key not in r:
            continue
        title = title or f"RANKER_WORKERS={r.get('workers')}"
        lines += [
            "",
            f"By ids with a cache hit, {title}, step by step (throughput should not "
            "fall as callers are added):",
            "",
            *_shape(r[key]["levels"]),
        ]
    lines += [
        "",
        f"Where a request's time goes, per stage, one request of {r['candidates']} candidates "
        "timed in-process on one thread (the mean of repeated runs):",
        "",
        "| stage | by features | by ids |",
        "|---|---|---|",
        f"| request body | {p['body_bytes'] / 1e3:.0f} kB | {p['ids_body_bytes'] / 1e3:.1f} kB |",
        f"| decode and check (msgspec, strict, every rule) | {p['decode_ms']:.2f} ms "
        f"| {p['ids_decode_ms']:.2f} ms |",
        f"| encode into embedding rows (hash; by ids: the table's rows gathered) "
        f"| {p['encode_ms']:.2f} ms | {p['ids_encode_ms']:.2f} ms |",
        f"| user tower (a cache miss only; by ids also the stored record, "
        f"{p['stored_user_bytes'] / 1e3:.1f} kB, decoded and encoded) "
        f"| {c['user_tower_ms']:.2f} ms | {c['user_tower_ms'] + p['stored_user_ms']:.2f} ms |",
        f"| item scorer run | {c['item_scorer_ms']:.2f} ms | {c['item_scorer_ms']:.2f} ms |",
        f"| response (sorted, msgspec) | {p['response_ms']:.2f} ms | {p['response_ms']:.2f} ms |",
        "",
        f"For scale, parsing the features body untyped takes {p['msgspec_untyped_ms']:.2f} ms "
        f"with msgspec and {p['orjson_untyped_ms']:.2f} ms with orjson.",
    ]
    s, ids, nv = r["service_hit"]["peak"], r["service_ids_hit"]["peak"], r["naive"]["peak"]
    lines += [
        "",
        f"At its peak, end to end with a cache hit is "
        f"{s['candidates_per_s'] / c['candidates_per_s']:.0%} of the raw ceiling by features and "
        f"{ids['candidates_per_s'] / c['candidates_per_s']:.0%} by ids; by features it is "
        f"{s['candidates_per_s'] / max(nv['candidates_per_s'], 1e-9):.1f}x the naive baseline.",
    ]
    if "vs" in r:
        a, b = r["vs"]["this"], r["vs"]["vs"]
        lines += [
            "",
            f"The same traffic {a['route']} and {b['route']}: Python work per request, "
            "in-process, medians of 5 alternating rounds (ms):",
            "",
            f"| stage | {a['route']} | {b['route']} |",
            "|---|---|---|",
            *(f"| {k.removesuffix('_ms')} | {a[k]:.3f} | {b[k]:.3f} |" for k in VS_STAGES),
        ]
    if failed:
        lines += ["", "Failed requests: " + "; ".join(failed) + "."]
    if refused:
        lines += [
            "",
            f"Refused at {OVERLOAD:g}x the peak (503, as admission should): "
            + "; ".join(refused)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _shape(levels: dict) -> list[str]:
    peak = max(v["candidates_per_s"] for v in levels.values())
    cores = [
        "-" if v.get("server_cores") is None else f"{v['server_cores']:.2f}"
        for v in levels.values()
    ]
    return [
        "| callers (closed loop) | " + " | ".join(levels) + " |",
        "|---|" + "---|" * len(levels),
        "| candidates/s | "
        + " | ".join(f"{v['candidates_per_s']:,.0f}" for v in levels.values())
        + " |",
        "| of the best step | "
        + " | ".join(f"{v['candidates_per_s'] / max(peak, 1e-9):.0%}" for v in levels.values())
        + " |",
        "| p99 ms | " + " | ".join(_ms(v["accepted_p99_ms"]) for v in levels.values()) + " |",
        "| server cores | " + " | ".join(cores) + " |",
    ]


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def rewrite_readme(path: Path, md: str) -> bool:
    """Replace the block between the bench:serving markers with `md`; False when `path` has no
    such block (nothing is written then)."""
    text = path.read_text() if path.is_file() else ""
    if not MARKER.search(text):
        return False
    path.write_text(MARKER.sub(lambda m: m.group(1) + md + m.group(2), text))
    return True
