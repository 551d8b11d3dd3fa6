"""GPU scores against CPU scores (gpu/check.sh): how far apart they are, and why.

The same exported model is scored by the CPU provider and by the provider under test, on the
rows stored with the model (samples.npz: real rows with the probabilities PyTorch gave them at
export) and on 16,384 rows drawn from them for many users. Each way the item scorer can run is
compared: plain runs, I/O binding, CUDA graphs, and CUDA with TF32 on (ONNX Runtime's default on
Ampere and later, which the engine turns off). Writes one JSON file:

    python gpu/parity.py --model MODEL_VERSION_FOLDER --provider cuda --out parity.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features import parity
from features.manifest import OUTPUTS
from service.engine import Engine, ScorerOptions, Scores


def cases(engine: Engine, folder: Path) -> dict[str, tuple]:
    s = np.load(folder / engine.manifest.samples)
    uid, uw = engine.contract.hash_side("user", s["user_ids"], s["user_vals"])
    iid, iw = engine.contract.hash_side("item", s["item_ids"], s["item_vals"])
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(iid), 16384)
    users = rng.integers(0, len(uid), 16)  # 16 users of about 1,000 candidates each
    return {
        "samples": (uid, uw, s["row_user"].astype(np.int64), iid, iw),
        "drawn_16384": (
            uid[users],
            uw[users],
            np.sort(rng.integers(0, 16, 16384)),
            iid[pick],
            iw[pick],
        ),
        "export": {k: s[k] for k in OUTPUTS},
    }


def diff(a: Scores | dict, b: Scores | dict) -> dict[str, float]:
    get = (lambda x, k: x[k]) if isinstance(a, dict) else getattr
    getb = (lambda x, k: x[k]) if isinstance(b, dict) else getattr
    return {k: float(np.abs(get(a, k).astype(np.float64) - getb(b, k)).max()) for k in OUTPUTS}


def run(engine: Engine, case: tuple) -> tuple[np.ndarray, Scores]:
    uid, uw, index, iid, iw = case
    user = engine.user_repr(uid, uw)
    return user, engine.score_raw(user, index, iid, iw)


def tf32_scores(folder: Path, engine: Engine, user: np.ndarray, case: tuple) -> Scores:
    """The item scorer on CUDA with ONNX Runtime's defaults (TF32 on), on the same user rows."""
    path = folder / engine.manifest.graphs["item_scorer"].file
    s = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", {"use_tf32": "1"})])
    _, _, index, iid, iw = case
    feeds = {"user_repr": user, "user_index": index, "item_ids": iid, "item_weights": iw}
    return Scores(*s.run(OUTPUTS, feeds))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model version folder")
    p.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cpu = Engine(args.model, "cpu")
    modes = {
        "plain": ScorerOptions(io_binding="off"),
        "io_binding": ScorerOptions(io_binding="on"),
        "cuda_graph": ScorerOptions(io_binding="on", cuda_graph=True, max_rows=16384),
    }
    engines = {}
    for name, options in modes.items():
        e = Engine(args.model, args.provider, scorer=options)
        e.warm()  # checks the options against plain runs; a failed one is off (scorer_mode)
        engines[name] = e
    all_cases = cases(cpu, args.model)
    export = all_cases.pop("export")
    out: dict = {
        "model": cpu.version,
        "provider": args.provider,
        "providers": engines["plain"].providers,
        "scorer_modes": {k: e.scorer_mode for k, e in engines.items()},
        "export_tolerance": parity.tolerance(cpu.manifest.kind),
        "cases": {},
    }
    for cname, case in all_cases.items():
        ref_user, ref = run(cpu, case)
        row: dict = {"rows": len(case[2]), "users": len(case[0])}
        if cname == "samples":
            row["cpu_vs_export"] = diff(ref, export)
        for name, e in engines.items():
            user, got = run(e, case)
            row[f"{name}_vs_cpu"] = diff(got, ref)
            row[f"{name}_user_repr_vs_cpu"] = float(np.abs(user - ref_user).max())
            if cname == "samples":
                row[f"{name}_vs_export"] = diff(got, export)
        if args.provider == "cuda":
            row["cuda_tf32_on_vs_cpu"] = diff(tf32_scores(args.model, cpu, ref_user, case), ref)
        out["cases"][cname] = row
    worst = max(
        v
        for row in out["cases"].values()
        for k, d in row.items()
        if k.endswith("_vs_cpu") and "tf32" not in k and isinstance(d, dict)
        for v in d.values()
    )
    out["worst_vs_cpu"] = worst
    out["within_export_parity"] = worst <= parity.ATOL
    out["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("providers", "scorer_modes", "worst_vs_cpu")}, indent=1))


if __name__ == "__main__":
    main()
