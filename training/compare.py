"""Evidence in the layout of the ESMM paper's Table 2: each model trained with K seeds on one
data set, CVR AUC on clicked test impressions and CTCVR AUC on all of them, mean +- std.

    python -m training.compare --data DIR --models base,division,esmm-ns,esmm --seeds 3 --out DIR

A model name is a kind of training/model.py, optionally with options after colons:
`esmm:ips=0.5` (ESCM2-IPS weight), `esmm:cal=isotonic` (adds a table of test ECE before and
after), `mmoe:experts=8:hidden=64x32`. Writes OUT/compare.{json,md} and
OUT/compare.png (mean +- std per model), and keeps each run's metrics.json under OUT/runs/.
The data is read and encoded once (cached under DATA/.encoded) and reused by every run. A run
already in OUT for the same model, seed, epoch cap and data files is reused (`--fresh` starts
over), so an interrupted comparison resumes and seeds or models can be added later.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from features.calibration import FITS
from training import setup_logging
from training.train import TrainConfig, train

log = logging.getLogger("training.compare")


def _widths(value: str) -> tuple[int, ...]:
    """`64x32` -> (64, 32)."""
    widths = tuple(int(w) for w in value.split("x"))
    if not widths or min(widths) < 1:
        raise ValueError(value)
    return widths


def _calibration(value: str) -> str:
    if value not in FITS:
        raise ValueError(value)
    return value


OPTIONS = {
    "ips": ("ips_weight", float),
    "cal": ("calibration", _calibration),
    "experts": ("experts", int),
    "hidden": ("hidden", _widths),
}
ECE_HEADS = ("ctr", "cvr", "ctcvr")
ENTIRE = "cvr_auc_entire"  # generated data only: pCVR against the true P(conversion | click)


def parse_model(spec: str) -> dict:
    """`esmm:ips=0.5:cal=platt` -> TrainConfig fields."""
    kind, *opts = spec.split(":")
    fields = {"model": kind}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key not in OPTIONS or not value:
            raise SystemExit(f"unknown option {opt!r} in {spec!r}; options: {sorted(OPTIONS)}")
        name, cast = OPTIONS[key]
        try:
            fields[name] = cast(value)
        except ValueError:
            raise SystemExit(f"bad value in {opt!r} of {spec!r}") from None
    return fields


def _stats(values: list[float]) -> dict:
    xs = np.array(values, dtype=np.float64)
    return {
        "mean": float(xs.mean()),
        "std": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0,
        "values": xs.tolist(),
    }


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for spec, ms in runs.items():
        row = {"seeds": len(ms)}
        for key in ("ctr_auc", "cvr_auc", "ctcvr_auc"):
            row[key] = _stats([m[key] for m in ms])
        if all(ENTIRE in m for m in ms):
            row[ENTIRE] = _stats([m[ENTIRE] for m in ms])
        if all("calibration" in m for m in ms):
            row["ece"] = {
                when: {
                    head: _stats([m["calibration"][f"test_ece_{when}"][head] for m in ms])
                    for head in ECE_HEADS
                }
                for when in ("before", "after")
            }
        row["best_epochs"] = [m["best_epoch"] for m in ms]
        row["train_seconds"] = float(np.mean([m["train_seconds"] for m in ms]))
        out[spec] = row
    return out


def _keys(table: dict[str, dict]) -> tuple[str, ...]:
    entire = all(ENTIRE in row for row in table.values())
    return ("cvr_auc", "ctcvr_auc", "ctr_auc") + ((ENTIRE,) if entire else ())


HEADINGS = {
    "cvr_auc": "CVR AUC",
    "ctcvr_auc": "CTCVR AUC",
    "ctr_auc": "CTR AUC",
    ENTIRE: "CVR AUC, entire space",
}


def differences(table: dict[str, dict]) -> dict:
    """Each model's mean minus the first model's, with the standard error of that difference
    (Welch: sqrt(s1^2/n1 + s2^2/n2)); empty with fewer than two seeds."""
    ref, *others = table
    if table[ref]["seeds"] < 2:
        return {}
    out = {}
    for spec in others:
        if table[spec]["seeds"] < 2:
            continue
        out[spec] = {
            k: {
                "diff": table[spec][k]["mean"] - table[ref][k]["mean"],
                "se": float(
                    np.hypot(
                        table[spec][k]["std"] / np.sqrt(table[spec]["seeds"]),
                        table[ref][k]["std"] / np.sqrt(table[ref]["seeds"]),
                    )
                ),
            }
            for k in _keys(table)
        }
    return {"reference": ref, "models": out} if out else {}


def _auc_lines(table: dict[str, dict], oracle: dict | None, data: str) -> list[str]:
    keys = _keys(table)
    lines = [
        f"Data: {data}. CVR AUC on clicked test impressions, CTCVR AUC on all test impressions "
        "(CTR AUC for reference); mean ± std over seeds."
        + (
            " Entire-space CVR AUC: pCVR over every test impression against the generator's "
            "true P(conversion | click)."
            if ENTIRE in keys
            else ""
        ),
        "",
        "| model | seeds | " + " | ".join(HEADINGS[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for spec, row in table.items():
        cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in keys]
        lines.append(f"| {spec} | {row['seeds']} | " + " | ".join(cells) + " |")
    if oracle:
        cells = [f"{oracle[k]:.4f}" if k in oracle else "" for k in keys]
        lines.append("| oracle (true probabilities) | | " + " | ".join(cells) + " |")
    return lines


def _difference_lines(table: dict[str, dict], diffs: dict) -> list[str]:
    if not diffs:
        return []
    keys = _keys(table)
    lines = [
        "",
        f"Difference from {diffs['reference']}: mean difference ± its standard error "
        "(sqrt(s1²/n1 + s2²/n2)):",
        "",
        "| model | " + " | ".join(HEADINGS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for spec, d in diffs["models"].items():
        cells = [f"{d[k]['diff']:+.4f} ± {d[k]['se']:.4f}" for k in keys]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    return lines


def _ece_lines(table: dict[str, dict], floor: dict | None) -> list[str]:
    calibrated = {spec: row["ece"] for spec, row in table.items() if "ece" in row}
    if not calibrated:
        return []
    lines = [
        "",
        "Expected calibration error on the test split (20 equal-mass bins; pCVR on clicked "
        "impressions), before -> after the calibration fitted on the validation split:",
        "",
        "| model | ECE pCTR | ECE pCVR | ECE pCTCVR |",
        "|---|---|---|---|",
    ]
    for spec, ece in calibrated.items():
        cells = [
            f"{ece['before'][h]['mean']:.4f} -> {ece['after'][h]['mean']:.4f} "
            f"(± {ece['after'][h]['std']:.4f})"
            for h in ECE_HEADS
        ]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    if floor:
        cells = [f"{floor[h]:.4f}" for h in ECE_HEADS]
        lines.append("| true probabilities (the floor) | " + " | ".join(cells) + " |")
    return lines


def markdown(
    table: dict[str, dict], oracle: dict | None, data: str, floor: dict | None = None
) -> str:
    lines = (
        _auc_lines(table, oracle, data)
        + _difference_lines(table, differences(table))
        + _ece_lines(table, floor)
    )
    return "\n".join(lines) + "\n"


def plot(table: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    x = np.arange(len(names))
    panels = [("cvr_auc", "CVR AUC (clicked)"), ("ctcvr_auc", "CTCVR AUC")]
    if all(ENTIRE in row for row in table.values()):
        panels.append((ENTIRE, "CVR AUC (entire space, true)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 1.2 * len(names) * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        means = [table[n][key]["mean"] for n in names]
        stds = [table[n][key]["std"] for n in names]
        ax.errorbar(x, means, yerr=stds, fmt="o", capsize=4)
        for i, n in enumerate(names):
            ax.scatter([i] * len(table[n][key]["values"]), table[n][key]["values"], s=8, alpha=0.4)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_key(data: Path, spec: str, seed: int, epochs: int) -> dict:
    """What a finished run's metrics depend on: the model spec, seed, epoch cap and the data
    files (by name, size and modification time)."""
    files = sorted(p for p in Path(data).glob("*.csv") if p.is_file())
    return {
        "spec": spec,
        "seed": seed,
        "epochs": epochs,
        "data": str(Path(data).resolve()),
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


def _finished(run: Path, key: dict) -> dict | None:
    """The metrics of an earlier run with the same key, or None."""
    try:
        if json.loads((run / "run_key.json").read_text()) == key:
            return json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def compare(data: Path, models: list[str], seeds: int, out: Path, epochs: int = 3) -> dict:
    """Train what is missing and tabulate. A run already in OUT with the same key is reused, so
    an interrupted comparison resumes and more seeds or models can be added later."""
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    oracle = floor = None
    parsed = {spec: parse_model(spec) for spec in models}  # every spec checked before any run
    for spec, fields in parsed.items():
        for seed in range(seeds):
            run = out / "runs" / f"{spec.replace(':', '_')}-seed{seed}"
            key = run_key(data, spec, seed, epochs)
            m = _finished(run, key)
            if m is not None:
                log.info("reusing %s, seed %d (%s)", spec, seed, run)
            else:
                log.info("training %s, seed %d", spec, seed)
                (run / "run_key.json").unlink(missing_ok=True)
                m = train(
                    TrainConfig(
                        data=data, out=run, seed=seed, epochs=epochs, reference=False, **fields
                    )
                )
                (run / "checkpoint.pt").unlink(missing_ok=True)  # the metrics are compared
                (run / "run_key.json").write_text(json.dumps(key))
            runs.setdefault(spec, []).append(m)
            oracle = oracle or m.get("oracle")
            floor = floor or m.get("calibration", {}).get("test_ece_oracle")
    table = summarise(runs)
    result = {
        "data": str(data),
        "seeds": seeds,
        "epochs": epochs,
        "models": table,
        "oracle": oracle,
        "ece_floor": floor,
        "differences": differences(table),
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    md = markdown(table, oracle, str(data), floor)
    (out / "compare.md").write_text(md)
    plot(table, out / "compare.png")
    print(md)
    return result


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(
        prog="python -m training.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--models", default="base,division,esmm-ns,esmm")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--epochs", type=int, default=3, help="at most; the best validation epoch is kept"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fresh", action="store_true", help="remove OUT first")
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be >= 1")
    if a.fresh:
        shutil.rmtree(a.out, ignore_errors=True)
    compare(a.data, [m for m in a.models.split(",") if m], a.seeds, a.out, a.epochs)


if __name__ == "__main__":
    main()
