"""Synthetic Ali-CCP logs with a planted ground truth, to compare a trained model with the oracle.

`python -m training.generate --out DIR` writes the four raw Ali-CCP files (same layout, no
header), `truth_{split}.csv` with each impression's true P(click) and P(conversion | click),
`items.parquet` (every item's 206/207/216/210 ids and its price), and `generator.json` with the
parameters and a summary (counts, oracle AUCs). `--layout tables` writes the same impressions
as named tables instead, the way a shop's own logs hold them, into DIR/tables/: events_{split},
users and items Parquet files and spec.yaml, the feature spec that reads them
(training/synthetic/tables.py) and truth_{split}.csv (one row per event, in the events' order;
its sample_id is the events' event_id), generator.json in DIR; `--layout both` writes both (the
Ali-CCP files byte-for-byte as without it).

Planted truth. Click and conversion are driven by different factors, so attractive-but-poor and
plain-but-good items both exist (the field that shows each term to a model in brackets; the
weights are `Params`):
  click logit = b0 + attract[item] (205) + appeal[category] (206) + class[121] (121)
                + propensity[user] (101) + scene[301] (301)
                + w_aff * log1p(count of the item's category in the user's 109_14)   (508 value)
                + w_int * min(number of the item's intents in the user's 150_14, 3)  (853)
  conv logit  = c0 + quality[item] (205; correlation -0.3 with attract) + reputation[shop] (207)
                + w_brand * log1p(count of the item's brand in the user's 127_14)    (702 value)
                + w_price * (1 - |consumption level (127) - price tier[category] (206)|)
                + w_126 * (level 126 - 1), 0 where the user has no field 126
                + w_conv_relevance * relevance     (0 by default)
                + quality[brand] (216; sd_brand_quality, 0 by default)
                - w_item_price * price_rel[item]   (0 by default)
where price_rel is the item's log price above its category's level in standard deviations:
the price column of items.parquet (one row per item, the table `ranker items build` reads),
which the Ali-CCP files do not carry.
where relevance = w_aff * log1p(n508) + w_int * min(n853, 3), the click logit's personal part.
With w_conv_relevance > 0 the two tasks share a factor that clicked impressions over-represent
(the sample selection bias ESMM is about), and with quality_attract_corr > 0 items that draw
clicks also convert: the regime where the paper expects entire-space training to pay.
b0 and c0 are solved so that CTR and P(conversion | click) hit their targets; labels are drawn
from exactly the probabilities written to truth_*.csv. Most of the click signal sits on shared
ids (category, class, scene, affinity), so a model can learn it from a few hundred thousand rows.
A user's behaviour lists are drawn once and repeated in every one of their sessions' rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from training.metrics import auc
from training.synthetic.impressions import (
    Impressions,
    Sessions,
    draw_actions,
    make_impressions,
    make_sessions,
)
from training.synthetic.params import PRESETS, Params, with_overrides
from training.synthetic.tables import write_tables
from training.synthetic.world import make_users, make_world
from training.synthetic.writer import (
    FIELD_BASE,
    SPLITS,
    write_actions,
    write_item_table,
    write_splits,
    write_truth,
)

__all__ = [
    "FIELD_BASE",
    "LAYOUTS",
    "PRESETS",
    "TABLES_DIR",
    "Params",
    "generate",
    "main",
    "with_overrides",
]

LAYOUTS = ("aliccp", "tables", "both")
TABLES_DIR = "tables"  # the named tables and their spec.yaml, under the output folder


def generate(
    out: Path,
    impressions: int = 200_000,
    seed: int = 0,
    test_fraction: float = 0.25,
    overrides: dict[str, float] | None = None,
    action_label: bool = False,
    layout: str = "aliccp",
) -> dict:
    """Write a synthetic Ali-CCP data set into `out`; returns the per-split summary.
    `overrides` replaces numeric Params (e.g. {"target_cvr": 0.03} for scarcer conversions);
    `action_label` also writes action_{split}.csv (sample_id,action): a post-click action such
    as add-to-cart, for ESM2. `layout` (LAYOUTS): the Ali-CCP files, the named tables with
    their spec and truth in `out/tables/` (generator.json in `out`), or both."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if impressions < 100:
        raise ValueError(f"need at least 100 impressions, got {impressions}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    p = with_overrides(Params(), overrides or {})
    rng = np.random.default_rng(seed)
    n_users = max(p.min_users, impressions // p.impressions_per_user)
    n_items = max(p.min_items, impressions // p.impressions_per_item)
    world = make_world(rng, p, n_items, np.random.default_rng([seed, 2]))
    users = make_users(rng, p, n_users, world)
    sessions = make_sessions(rng, p, impressions, seed, test_fraction, users)
    imp = make_impressions(rng, p, world, users, sessions)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if layout in ("aliccp", "both"):
        write_splits(out, world, users, sessions, imp)
        write_item_table(out, world)
    if layout in ("tables", "both"):
        # the truth beside the tables too: one row per event, in the events' order
        write_tables(out / TABLES_DIR, world, users, sessions, imp)
        write_truth(out / TABLES_DIR, sessions, imp)
    if action_label:
        write_actions(out, sessions, imp, draw_actions(p, seed, imp))
    summary = {split: _split_summary(sessions, imp, split == "test") for split in SPLITS}
    meta = {
        "impressions": impressions,
        "seed": seed,
        "test_fraction": test_fraction,
        "layout": layout,
        "populations": {
            "users": n_users,
            "items": n_items,
            "sessions": len(sessions.length),
            "categories": p.categories,
            "shops": p.shops,
            "brands": p.brands,
            "intents": p.intents,
            "scenes": p.scenes,
        },
        "rates": {
            "target_ctr": p.target_ctr,
            "target_cvr": p.target_cvr,
            "ctr": _rounded(imp.click.mean()),
            "cvr": _rounded(imp.conv.sum() / max(imp.click.sum(), 1)),
            "intercepts": imp.intercepts,
        },
        "params": dataclasses.asdict(p),
        "summary": summary,
    }
    (out / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary


def _rounded(x: float) -> float | None:
    """JSON has no NaN: an AUC of a split with one class only becomes null."""
    return None if np.isnan(x) else round(float(x), 5)


def _split_summary(s: Sessions, imp: Impressions, test: bool) -> dict:
    rows = s.test[imp.session] == test
    click, conv = imp.click[rows], imp.conv[rows]
    pc, pv = imp.p_click[rows], imp.p_conv[rows]
    return {
        "impressions": int(rows.sum()),
        "clicks": int(click.sum()),
        "conversions": int(conv.sum()),
        "sessions": int((s.test == test).sum()),
        "users": int(np.unique(s.user[s.test == test]).size),
        "ctr": _rounded(click.mean() if len(click) else np.nan),
        "cvr": _rounded(conv.sum() / click.sum() if click.any() else np.nan),
        "oracle_auc": {
            "ctr": _rounded(auc(click, pc)),
            "cvr": _rounded(auc(conv[click], pv[click])),
            "ctcvr": _rounded(auc(conv, pc * pv)),
        },
    }


def _override(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--impressions", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named regime of parameters (PRESETS); --set overrides apply on top",
    )
    ap.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a numeric generator parameter (see Params), e.g. target_cvr=0.03",
    )
    ap.add_argument(
        "--action-label",
        action="store_true",
        help="also write action_{train,test}.csv: a post-click action label (for ESM2)",
    )
    ap.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="aliccp",
        help="the Ali-CCP files (default), the named tables and their spec.yaml in OUT/tables/, "
        "or both",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        summary = generate(
            args.out,
            args.impressions,
            args.seed,
            args.test_fraction,
            {**PRESETS.get(args.preset, {}), **dict(args.set)},
            args.action_label,
            args.layout,
        )
    except ValueError as e:
        ap.error(str(e))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
