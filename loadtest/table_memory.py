"""Memory of the service with a one-million-item table, before and after table reloads.

    python -m loadtest.table_memory --model-dir models [--items 1000000] [--reloads 3]
        [--out runs/table-memory]

Builds a synthetic Parquet table of `--items` items with Ali-CCP's item fields as a catalogue
has them (a category, a shop and a brand each, one to five intents, a price) through
`ranker items build --table`'s reader, timing it; starts the service (`python -m service`, a real
process) on the newest model under `--model-dir` once without a table and once with it, and
reads the process's resident size (VmRSS) and its peak (VmHWM) from /proc when it is ready and
after a few id-only requests. Then, `--reloads` times, writes a new table (other prices) beside
the live file, renames it into place and asks `POST /admin/reload` for it, and reads them again:
the resident size after each reload shows whether a swap leaves the old table behind. Writes
OUT/table_memory.json and prints it.

Run it alone: on two cores anything else running moves the timings (not the sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.item_source import from_parquet
from features.items import ItemTable
from loadtest.parts import ServiceProcess
from service.model_folder import newest_version
from training.cli import prog as cli_prog

MB = 1 << 20
REQUESTS = 20  # id-only requests after each step, so the figures are a serving process's
CANDIDATES = 500


def synthetic_table(path: Path, items: int, seed: int) -> None:
    """A catalogue's item table: vocabulary sizes of the order of Ali-CCP's (about 10k
    categories, 300k shops, 100k brands, 50k intents), one to five intents an item."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, items)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    columns = {
        "item_id": pa.array(140_000_000 + rng.permutation(items).astype(np.int64)),
        "206": pa.array(150_000_000 + rng.integers(0, 10_000, items)),
        "207": pa.array(160_000_000 + rng.integers(0, 300_000, items)),
        "210": pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(170_000_000 + rng.integers(0, 50_000, offsets[-1]))
        ),
        "216": pa.array(180_000_000 + rng.integers(0, 100_000, items)),
        "price": pa.array(np.round(rng.lognormal(3.0, 1.0, items), 2)),
    }
    pq.write_table(pa.table(columns), path)


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out


def exercise(url: str, ids: np.ndarray, rng: np.random.Generator) -> None:
    """A few id-only requests; each must be served from the table."""
    for _ in range(REQUESTS):
        body = {
            "user_id": int(rng.integers(1 << 30)),
            "user_features": {"101": int(rng.integers(1 << 30))},
            "item_ids": rng.choice(ids, CANDIDATES, replace=False).tolist(),
        }
        r = httpx.post(f"{url}/rank", json=body, timeout=30)
        r.raise_for_status()
        assert r.json()["unknown_items"] == [], "an item of the table was not found"


def start(log: Path, **settings) -> tuple[ServiceProcess, float]:
    t0 = time.perf_counter()
    svc = ServiceProcess(log_path=log, **settings).wait_ready(600)
    return svc, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = newest_version(args.model_dir)
    parquet, live, rng = out / "items.parquet", out / "items.npz", np.random.default_rng(0)
    r: dict = {"items": args.items, "model": str(model)}

    synthetic_table(parquet, args.items, seed=0)
    t0 = time.perf_counter()
    table = from_parquet(parquet)
    r["parquet_read_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    table.save(live)
    r["npz_write_s"] = round(time.perf_counter() - t0, 2)
    r["parquet_bytes_per_item"] = round(parquet.stat().st_size / args.items, 1)
    r["npz_bytes_per_item"] = round(live.stat().st_size / args.items, 1)
    t0 = time.perf_counter()
    ItemTable.load(live)  # what the service's load starts with: read and digest-checked
    r["npz_load_s"] = round(time.perf_counter() - t0, 2)
    ids = table.item_id

    svc, ready_s = start(out / "service-no-table.log", model_dir=model, reload_poll_s=0)
    try:
        r["without_table"] = {"ready_s": round(ready_s, 2), **memory(svc.proc.pid)}
    finally:
        svc.stop()

    token = secrets.token_hex(16)
    svc, ready_s = start(
        out / "service.log", model_dir=model, item_table=live, admin_token=token, reload_poll_s=0
    )
    try:
        loaded = {"ready_s": round(ready_s, 2), **memory(svc.proc.pid)}
        exercise(svc.url, ids, rng)
        loaded["after_requests"] = memory(svc.proc.pid)
        r["with_table"] = loaded
        r["reloads"] = []
        for k in range(1, args.reloads + 1):
            t = ItemTable(
                table.item_id, table.ids, table.vals, table.price * (1 + k / 10), table.max_len
            )
            t.save(out / "next.npz")
            os.replace(out / "next.npz", live)
            t0 = time.perf_counter()
            resp = httpx.post(
                f"{svc.url}/admin/reload",
                headers={"authorization": f"Bearer {token}"},
                timeout=600,
            )
            took = time.perf_counter() - t0
            resp.raise_for_status()
            assert resp.json()["status"] == "reloaded", resp.text
            time.sleep(1.0)  # the old version closes when its last request ends
            exercise(svc.url, ids, rng)
            r["reloads"].append({"reload_s": round(took, 2), **memory(svc.proc.pid)})
    finally:
        svc.stop()

    extra = loaded["rss_mb"] - r["without_table"]["rss_mb"]
    r["served_bytes_per_item"] = round(extra * MB / args.items, 1)
    r["table_load_s"] = round(loaded["ready_s"] - r["without_table"]["ready_s"], 2)
    r["rss_mb_after_each_reload"] = [round(x["rss_mb"]) for x in r["reloads"]]
    r["table"] = {"source": "synthetic", "seed": 0, "max_len": dict(table.max_len)}
    return r


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog=cli_prog("loadtest.table_memory"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--reloads", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/table-memory"))
    args = p.parse_args(argv)
    r = run(args)
    (args.out / "table_memory.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
