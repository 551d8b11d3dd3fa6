"""Training benchmark in one run: generate, read, train each model, export; figures out.

    python -m training.bench [--impressions 1000000] [--models esmm,base] [--out runs/bench]

Writes OUT/bench.json and OUT/bench.md, and puts the table into README.md between the
`<!-- bench:training -->` markers. Every model trains in its own process, so each peak RSS is
that model's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from features.contract import FeatureContract
from training.cli import prog as cli_prog
from training.config import POOLING, TrainConfig
from training.splits import load_split

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"(<!-- bench:training -->\n).*?(<!-- /bench:training -->)", re.S)


def _run(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True)
    return time.perf_counter() - t0


def run(impressions: int, models: list[str], out: Path, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"synthetic-{impressions}-seed{seed}"
    result: dict = {
        "impressions": impressions,
        "seed": seed,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    if not (data / "sample_skeleton_train.csv").is_file():
        result["generate_seconds"] = _run(
            "training.generate",
            "--out",
            str(data),
            "--impressions",
            str(impressions),
            "--seed",
            str(seed),
        )
    # Read and encode once here, from scratch (timed); every model's run then uses that cache.
    contract = FeatureContract.default(**POOLING[TrainConfig.pooling])
    shutil.rmtree(data / ".encoded", ignore_errors=True)
    t0 = time.perf_counter()
    n_rows = sum(len(load_split(data, s, contract, data / ".encoded")) for s in ("train", "test"))
    result["read_seconds"] = time.perf_counter() - t0
    result["read_rows_per_second"] = n_rows / result["read_seconds"]
    result["models"] = {}
    for model in models:
        run_dir = out / model
        wall = _run(
            "training.train",
            "--data",
            str(data),
            "--out",
            str(run_dir),
            "--model",
            model,
            "--seed",
            str(seed),
        )
        m = json.loads((run_dir / "metrics.json").read_text())
        result["models"][model] = {
            **{
                k: m[k]
                for k in (
                    "ctr_auc",
                    "cvr_auc",
                    "ctcvr_auc",
                    "samples_per_second",
                    "train_seconds",
                    "best_epoch",
                    "peak_rss_mb",
                    "n_train",
                    "n_test",
                )
            },
            "interactions": m["interactions"],  # auto's choice, with the fields it left out
            "without": m["without"],
            "lr": {h: m["reference"][f"{h}_auc"] for h in ("ctr", "cvr", "ctcvr")},
            "oracle": m["oracle"],
            "wall_seconds": wall,
        }
    if models:
        target = out / "models" / models[0] / "bench"
        wall = _run(
            "training.export", "--run", str(out / models[0]), "--out", str(target), "--force"
        )
        manifest = json.loads((target / "manifest.json").read_text())
        result["export"] = {
            "model": models[0],
            "wall_seconds": wall,
            "parity_max_abs_error": manifest["parity"]["max_abs_error"],
            "bytes": {
                g["file"]: (target / g["file"]).stat().st_size for g in manifest["graphs"].values()
            },
        }
    return result


def markdown(r: dict) -> str:
    lines = [
        f"Generated set: {r['impressions']:,} impressions (seed {r['seed']}), "
        f"{r['cpus']} CPUs. Read + encode: {r['read_seconds']:.0f} s "
        f"({r['read_rows_per_second']:,.0f} impressions/s). AUCs on the test split; the oracle "
        "scores with the true probabilities; LR is a sparse logistic regression per head (CVR on "
        "clicked rows).",
        "",
        "| model | interactions | CTR AUC (oracle) | CVR AUC (oracle) | CTCVR AUC (oracle) "
        "| LR CTR / CVR / CTCVR | train rows/s | best epoch | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        o = m["oracle"]
        lines.append(
            f"| {name} | {_interactions(m)} | {m['ctr_auc']:.4f} ({o['ctr_auc']:.4f}) "
            f"| {m['cvr_auc']:.4f} ({o['cvr_auc']:.4f}) "
            f"| {m['ctcvr_auc']:.4f} ({o['ctcvr_auc']:.4f}) "
            f"| {' / '.join(f'{v:.4f}' for v in m['lr'].values())} "
            f"| {m['samples_per_second']:,.0f} | {m['best_epoch']} | {m['peak_rss_mb']:,.0f} MB |"
        )
    if "export" in r:
        e = r["export"]
        sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in e["bytes"].items())
        lines += [
            "",
            f"Export of `{e['model']}`: {e['wall_seconds']:.0f} s, parity max abs "
            f"error {e['parity_max_abs_error']:.1e} (tolerance 1e-5); {sizes}.",
        ]
    return "\n".join(lines) + "\n"


def _interactions(m: dict) -> str:
    """The run's interactions, and the fields it left out (auto's choice on Ali-CCP data)."""
    if not m["without"]:
        return m["interactions"]
    return f"{m['interactions']}, without {' '.join(m['without'])}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog=cli_prog("training.bench"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--impressions", type=int, default=1_000_000)
    p.add_argument("--models", default="esmm,base")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-readme", dest="readme", action="store_false")
    a = p.parse_args(argv)
    r = run(a.impressions, [m for m in a.models.split(",") if m], a.out, a.seed)
    md = markdown(r)
    (a.out / "bench.json").write_text(json.dumps(r, indent=2))
    (a.out / "bench.md").write_text(md)
    if a.readme and README.is_file():
        text = README.read_text()
        if MARKER.search(text):
            README.write_text(MARKER.sub(lambda m: m.group(1) + md + m.group(2), text))
    print(md)


if __name__ == "__main__":
    main()
