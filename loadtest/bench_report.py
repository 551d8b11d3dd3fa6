"""The serving benchmark's figures as Markdown (OUT/serve.md and the README's block between the
`<!-- bench:serving -->` markers): what loadtest/bench.py measured, rendered, nothing measured
here."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"(<!-- bench:serving -->\n).*?(<!-- /bench:serving -->)", re.S)
P99_BOUND_MS = 50.0
VS_STAGES = ("decode_ms", "encode_ms", "ids_decode_ms", "ids_encode_ms", "stored_user_ms")


ROWS = (  # the id path first: it is how a recommender calls a ranker
    ("service_ids_hit", "/rank by ids (both stores), user cache hit"),
    ("service_ids_miss", "/rank by ids (both stores), user cache miss"),
    ("service_hit", "/rank by features, user cache hit"),
    ("service_miss", "/rank by features, user cache miss"),
    ("naive", "naive: full graph per request, tiled, no cache/batching"),
)


def markdown(r: dict) -> str:
    c, p = r["ceiling"], r["parsing"]
    behaviour = r["behaviour_ids"]
    levels = ", ".join(map(str, r["concurrency_levels"]))
    lines = [
        f"{r['candidates']} candidates per request (`loadtest/traffic.py`), {len(behaviour)} "
        f"users of {min(behaviour)}-{max(behaviour)} behaviour ids; each path closed-loop at "
        f"{levels} concurrent clients ({r['seconds']:g} s each), then open-loop at half its "
        f"peak; load generator on the same {r['cpus']}-core machine; model {r['model']}. User "
        f"tower {c['user_tower_ms']:.2f} ms, full graph at {r['candidates']} rows "
        f"{c['full_graph_ms']:.2f} ms.",
        "",
        f"| path | peak candidates/s (clients) | p99 at peak ms | candidates/s at p99 <= "
        f"{P99_BOUND_MS:.0f} ms (clients) | p50 / p99 ms at half of peak | cache hits |",
        "|---|---|---|---|---|---|",
        f"| item scorer in-process, one thread (raw ceiling) | {c['candidates_per_s']:,.0f} "
        f"| {c['item_scorer_ms']:.2f} ms per run |  |  |  |",
    ]
    failed = []
    for key, label in ROWS:
        x = r[key]
        pk, ub, hf = x["peak"], x["under_bound"], x["half"]
        under = "none" if ub is None else f"{ub['candidates_per_s']:,.0f} ({ub['concurrency']})"
        lines.append(
            f"| {label} | {pk['candidates_per_s']:,.0f} ({pk['concurrency']}) "
            f"| {_ms(pk['accepted_p99_ms'])} | {under} "
            f"| {_ms(hf['accepted_p50_ms'])} / {_ms(hf['accepted_p99_ms'])} "
            f"| {pk['hit_rate']:.0%} |"
        )
        for run in [*x["levels"].values(), hf]:
            bad = {k: v for k, v in run["by_status"].items() if k != "200"}
            if bad:
                failed.append(f"{label}: {sum(bad.values())} of {run['requests']} not 200 ({bad})")
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
    return "\n".join(lines) + "\n"


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
