"""The comparison's report: per-model statistics over seeds, the differences between models,
and the markdown tables and plot that training.compare writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_HEADS = ("ctr", "cvr", "ctcvr")
ENTIRE = "cvr_auc_entire"  # generated data only: pCVR against the true P(conversion | click)


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
