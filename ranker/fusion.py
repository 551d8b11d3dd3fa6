"""Fusion, evaluated offline: which exponents of `pctr^a * pcvr^b * price^c` rank a split's
requests best, by the money they would have made and the conversions they would have put first.

    ranker fusion evaluate --model DIR --spec SPEC --split test \\
        --grid a=0.5,1,2,b=0.5,1,2,c=0,0.5,1 [--k 10] [--policy product|sum] [--out runs/fusion]

The split is scored once, by the service's own engine and contract (`ranker predict`); each
point of the grid is then the service's own fusion (service/fusion.py) over those probabilities,
and each request's list is ranked by it. Per point, averaged over requests (training/listwise.py):

- GMV-weighted NDCG@k: the gain of an item is its price x its conversion (a conversion counts
  with its click, as the funnel does); over the requests where something was bought;
- revenue@k: the price x conversion of each request's top k, averaged over every request;
- conversion AUC and click AUC within requests (rows-weighted, requests with both classes).

A request is the spec's request key (the events `/rank` ranked together); a spec without one
ranks each user's events of the split as one list, and the report says so. The price is the
items table's column the spec names (`price`): as the service refuses to rank a request with
`c != 0` when an item has no price, requests holding such an item are left out of every point
(counted in the report), so every point ranks the same lists. The pCTCVR ranking (a = b = 1,
c = 0, the service's default) is always a row. Writes fusion.json, fusion.md and fusion.png
(the metrics against the grid's most varied exponent, a line per setting of the others).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger("ranker.fusion")
PARAMS = ("a", "b", "c")
BASELINE = (1.0, 1.0, 0.0)  # pCTCVR: the service's default fusion (RANKER_FUSION_A/B/C)
METRICS = {  # key -> column title (k filled in)
    "gmv_ndcg": "GMV-NDCG@{k}",
    "revenue": "revenue@{k}",
    "conversion_auc": "conversion AUC within requests",
    "click_auc": "click AUC within requests",
}


def parse_grid(text: str) -> dict[str, list[float]]:
    """`a=0.5,1,2,b=1,c=0,0.5` -> {a: [0.5, 1, 2], b: [1], c: [0, 0.5]}: a value belongs to the
    last name before it; a name left out takes its default exponent (1, 1, 0)."""
    grid: dict[str, list[float]] = {}
    name = None
    for token in (t.strip() for t in text.split(",")):
        if "=" in token:
            name, token = (x.strip() for x in token.split("=", 1))
            if name not in PARAMS:
                raise ValueError(f"--grid: {name!r} is not an exponent (a, b or c)")
            if name in grid:
                raise ValueError(f"--grid: {name} is given twice")
            grid[name] = []
        if name is None:
            raise ValueError(f"--grid: {token!r} comes before any a=, b= or c=")
        try:
            value = float(token)
        except ValueError:
            raise ValueError(f"--grid: {name}: {token!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > 8:  # the service's bound (request.py)
            raise ValueError(f"--grid: {name}={token}: an exponent is a number in [-8, 8]")
        grid[name].append(value)
    for p, default in zip(PARAMS, BASELINE, strict=True):
        grid.setdefault(p, [default])
        grid[p] = list(dict.fromkeys(grid[p]))
    return grid


def load_split(model_dir: Path, spec_path: Path, split: str) -> dict:
    """The split scored by the model, with each event's request, labels and price, restricted
    to the requests whose every item has a price."""
    import pyarrow.parquet as pq

    from features import spec as S
    from ranker.predict import predict_spec

    spec = S.load(spec_path)
    if not spec.price:
        raise S.SpecError(f"{spec.source}: price: the spec names no price column of its items")
    labels = (spec.labels["click"], spec.labels["conversion"])
    keys, probs = predict_spec(model_dir, spec_path, split, columns=labels)
    click = _flags(keys[labels[0]], f"{spec.source}: labels.click")
    conversion = _flags(keys[labels[1]], f"{spec.source}: labels.conversion")
    items = pq.read_table(spec.table_path("items"), columns=[spec.keys["item"], spec.price])
    prices = dict(
        zip(items[spec.keys["item"]].to_pylist(), items[spec.price].to_pylist(), strict=True)
    )
    price = np.array([prices.get(i) for i in keys["item_id"]], dtype=np.float64)  # None: NaN
    by = "request_id" if spec.keys["request"] else "user_id"
    lists = np.asarray(keys[by])
    unpriced = np.unique(lists[np.isnan(price)])
    keep = ~np.isin(lists, unpriced)
    return {
        "lists_by": by,
        "requests": int(len(np.unique(lists))),
        "left_out_requests": int(len(unpriced)),
        "list": lists[keep],
        "click": click[keep],
        "conversion": (conversion & click)[keep],  # a conversion counts with its click
        "price": price[keep],
        **{k: v[keep] for k, v in probs.items()},
    }


def _flags(column, where: str) -> np.ndarray:
    if column.null_count:
        raise ValueError(f"{where}: {column.null_count} null labels")
    return np.asarray(column.to_numpy(zero_copy_only=False)).astype(bool)


def evaluate(split: dict, grid: dict[str, list[float]], policy: str, k: int) -> list[dict]:
    """One row per point of the grid (and the pCTCVR baseline): its exponents and metrics."""
    from service import fusion
    from training.listwise import Requests

    req = Requests(split["list"])
    gain = split["price"] * split["conversion"]
    points = [(policy, *pt) for pt in itertools.product(*(grid[p] for p in PARAMS))]
    if ("product", *BASELINE) not in points:
        points.insert(0, ("product", *BASELINE))
    rows = []
    for pol, a, b, c in points:
        params = fusion.FusionParams(pol, a, b, c)
        score = fusion.score(params, split["pctr"], split["pcvr"], split["price"])
        ndcg, bought = req.ndcg_at(k, score, gain)
        conv_auc, conv_lists = req.auc_within(split["conversion"], score)
        click_auc, click_lists = req.auc_within(split["click"], score)
        rows.append(
            {
                "policy": pol,
                "a": a,
                "b": b,
                "c": c,
                "baseline": (pol, a, b, c) == ("product", *BASELINE),
                "gmv_ndcg": ndcg,
                "revenue": req.gain_at(k, score, gain),
                "conversion_auc": conv_auc,
                "click_auc": click_auc,
                "lists_with_a_purchase": bought,
                "lists_with_both_conversion_classes": conv_lists,
                "lists_with_both_click_classes": click_lists,
            }
        )
    return rows


def markdown(result: dict) -> str:
    k, rows = result["k"], result["points"]
    best = max(r["gmv_ndcg"] for r in rows)
    titles = [t.format(k=k) for t in METRICS.values()]
    lines = [
        f"Fusion on {result['split']} of {result['spec']}, model {result['model']}: "
        f"{result['lists']:,} lists ({result['lists_by']}), {result['left_out_requests']:,} left "
        f"out for an item without a price; sorted by GMV-NDCG@{k}.",
        "",
        "| policy | a | b | c | " + " | ".join(titles) + " |",
        "|---|---|---|---|" + "---|" * len(titles),
    ]
    for r in sorted(rows, key=lambda r: -r["gmv_ndcg"]):
        marks = ["pCTCVR, the default"] * r["baseline"] + ["best"] * (r["gmv_ndcg"] == best)
        mark = f" ({'; '.join(marks)})" if marks else ""
        cells = [f"{r['revenue']:.3f}" if m == "revenue" else f"{r[m]:.4f}" for m in METRICS]
        lines.append(
            f"| {r['policy']}{mark} | {r['a']:g} | {r['b']:g} | {r['c']:g} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, grid: dict[str, list[float]], path: Path) -> None:
    """Each metric against the most varied exponent, one line per setting of the other two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = max(PARAMS[::-1], key=lambda p: len(grid[p]))  # ties: c, then b, then a
    others = [p for p in PARAMS if p != x]
    rows = [r for r in result["points"] if r["policy"] == result["policy"]]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, (m, title) in zip(axes, METRICS.items(), strict=True):
        for setting in itertools.product(*(grid[p] for p in others)):
            line = sorted(
                (r[x], r[m])
                for r in rows
                if all(r[p] == v for p, v in zip(others, setting, strict=True))
            )
            if line:
                label = ", ".join(f"{p}={v:g}" for p, v in zip(others, setting, strict=True))
                ax.plot(*zip(*line, strict=True), marker="o", label=label)
        ax.set_title(title.format(k=result["k"]), fontsize=10)
        ax.set_xlabel(x)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ranker fusion",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)
    e = sub.add_parser("evaluate", help="rank a split by each point of a grid of exponents")
    e.add_argument("--model", type=Path, required=True, help="a model folder (newest version)")
    e.add_argument("--spec", type=Path, required=True, help="a feature spec: where its tables are")
    e.add_argument("--split", choices=("train", "test"), default="test")
    e.add_argument("--grid", default="a=1,b=1,c=0,0.5,1", help="e.g. a=0.5,1,2,b=1,c=0,0.5,1")
    e.add_argument("--policy", choices=("product", "sum"), default="product")
    e.add_argument("--k", type=int, default=10, help="the top of each list the metrics read")
    e.add_argument("--out", type=Path, default=Path("runs/fusion"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from features.spec import SpecError

    if args.k < 1:
        p.error("--k must be at least 1")
    try:
        grid = parse_grid(args.grid)
        split = load_split(args.model, args.spec, args.split)
    except (ValueError, FileNotFoundError, SpecError) as err:
        p.error(str(err))
    result = {
        "model": str(args.model),
        "spec": str(args.spec),
        "split": args.split,
        "policy": args.policy,
        "k": args.k,
        "lists_by": split["lists_by"],
        "lists": split["requests"] - split["left_out_requests"],
        "left_out_requests": split["left_out_requests"],
        "grid": grid,
        "points": evaluate(split, grid, args.policy, args.k),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (args.out / "fusion.md").write_text(md)
    plot(result, grid, args.out / "fusion.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
