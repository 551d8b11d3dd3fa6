"""Two models' item scorers on the GPU against the CPU: each graph's CUDA scores against its CPU
scores (TF32 off, as the service runs it), and the CUDA time per run by rows and users a batch
holds (the median of 30 runs after 5). Run on the GPU machine after `gpu/check.sh` has installed
onnxruntime-gpu into /tmp/site (docs/gpu-check/attn/README.md has the run):

    PYTHONPATH=/tmp/site:$PWD python3 gpu/scorer_gpu.py MODEL_A MODEL_B > attn.json

Each model is loaded as the service loads it (service.engine.Engine, plain runs; `--provider
cpu` tries the script where there is no GPU); the inputs are its first sample user and that
user's rows, tiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from features.manifest import OUTPUTS
from service.engine import Engine, ScorerOptions

SHAPES = ((1000, 1), (1000, 16), (16384, 1), (16384, 64), (16384, 256))  # (rows, users)
PLAIN = ScorerOptions(io_binding="off")  # plain runs: the graph's own cost, no binding


def first_user(engine: Engine):
    """The model's first sample user and that user's rows, hashed as the service hashes them."""
    s = np.load(engine.folder / engine.manifest.samples)
    users, index = np.unique(s["row_user"], return_inverse=True)
    uid, uw = engine.contract.hash_side("user", s["user_ids"][users[:1]], s["user_vals"][users[:1]])
    rows = np.nonzero(index == 0)[0]
    iid, iw = engine.contract.hash_side("item", s["item_ids"][rows], s["item_vals"][rows])
    return uid, uw, iid, iw


def measure(folder: Path, provider: str) -> dict:
    cpu, dev = Engine(folder, "cpu", scorer=PLAIN), Engine(folder, provider, scorer=PLAIN)
    uid, uw, iid, iw = first_user(cpu)
    rep = cpu.user_repr(uid, uw)
    out = {
        "providers": dev.providers,
        "user_tower_gpu_vs_cpu": float(np.abs(dev.user_repr(uid, uw) - rep).max()),
    }
    for rows, users in SHAPES:
        pick = np.resize(np.arange(len(iid)), rows)
        args = (np.repeat(rep, users, 0), np.arange(rows, dtype=np.int64) % users)
        args += (iid[pick], iw[pick])
        a, b = dev.score_raw(*args), cpu.score_raw(*args)
        diff = max(float(np.abs(getattr(a, k) - getattr(b, k)).max()) for k in OUTPUTS)
        for _ in range(5):
            dev.score_raw(*args)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            dev.score_raw(*args)
            times.append(time.perf_counter() - t)
        out[f"{rows}x{users}"] = {
            "max_abs_gpu_vs_cpu": diff,
            "gpu_ms_median": round(statistics.median(times) * 1e3, 3),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="model version folders")
    p.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    a = p.parse_args(argv)
    print(json.dumps({f.name: measure(f, a.provider) for f in a.models}, indent=1))


if __name__ == "__main__":
    main()
