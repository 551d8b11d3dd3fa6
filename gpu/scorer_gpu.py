"""Two models' item scorers on the GPU against the CPU: each graph's CUDA scores against its CPU
scores (TF32 off, as the service runs it), and the CUDA time per run by rows and users a batch
holds (the median of 30 runs after 5). Run on the GPU machine after `gpu/check.sh` has installed
onnxruntime-gpu into /tmp/site (docs/gpu-check/attn/README.md has the run):

    PYTHONPATH=/tmp/site:$PWD python3 gpu/scorer_gpu.py MODEL_A MODEL_B > attn.json

A model folder needs item_scorer.onnx, user_tower.onnx, manifest.json and samples.npz; the
inputs are its first sample user and that user's rows, tiled.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features.contract import FeatureContract

SHAPES = ((1000, 1), (1000, 16), (16384, 1), (16384, 64), (16384, 256))  # (rows, users)


def first_user(folder: Path):
    m = json.loads((folder / "manifest.json").read_text())
    c = FeatureContract.from_dict(m["feature_contract"])
    s = dict(np.load(folder / "samples.npz"))
    users, index = np.unique(s["row_user"], return_inverse=True)
    uid, uw = c.hash_side("user", s["user_ids"][users[:1]], s["user_vals"][users[:1]])
    rows = np.nonzero(index == 0)[0]
    iid, iw = c.hash_side("item", s["item_ids"][rows], s["item_vals"][rows])
    return uid, uw, iid, iw


def session(path: Path, cuda: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cpu = "CPUExecutionProvider"
    providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), cpu] if cuda else [cpu]
    return ort.InferenceSession(str(path), opts, providers=providers)


def measure(folder: Path) -> dict:
    uid, uw, iid, iw = first_user(folder)
    user = {"user_ids": uid, "user_weights": uw}
    (rep,) = session(folder / "user_tower.onnx", False).run(None, user)
    (rep_gpu,) = session(folder / "user_tower.onnx", True).run(None, user)
    gpu = session(folder / "item_scorer.onnx", True)
    cpu = session(folder / "item_scorer.onnx", False)
    out = {
        "providers": gpu.get_providers(),
        "user_tower_gpu_vs_cpu": float(np.abs(rep_gpu - rep).max()),
    }
    for rows, users in SHAPES:
        pick = np.resize(np.arange(len(iid)), rows)
        feeds = {
            "user_repr": np.repeat(rep, users, 0),
            "user_index": (np.arange(rows) % users).astype(np.int64),
            "item_ids": iid[pick],
            "item_weights": iw[pick],
        }
        diff = max(
            float(np.abs(a - b).max())
            for a, b in zip(gpu.run(None, feeds), cpu.run(None, feeds), strict=True)
        )
        for _ in range(5):
            gpu.run(None, feeds)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            gpu.run(None, feeds)
            times.append(time.perf_counter() - t)
        out[f"{rows}x{users}"] = {
            "max_abs_gpu_vs_cpu": diff,
            "gpu_ms_median": round(statistics.median(times) * 1e3, 3),
        }
    return out


if __name__ == "__main__":
    print(json.dumps({Path(f).name: measure(Path(f)) for f in sys.argv[1:]}, indent=1))
