"""Score a split of an Ali-CCP folder offline, one probability triple per impression, through
the service's own engine and feature contract.

    ranker predict --model DIR --data DIR --split test --out FILE.csv

Writes `sample_id,pctr,pcvr,pctcvr` per impression in log order (every impression, conversions
without a click included), the calibrated probabilities `/rank` returns for the same features.
The user tower runs once per user, the item scorer in chunks of rows, as the service does: this
is the offline side of the offline/online consistency check.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ranker.predict")
CHUNK = 8192


def predict(
    model_dir: Path, data: Path, split: str, items: Path | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sample ids, {pctr, pcvr, pctcvr}) of every impression of the split; a model trained
    with numeric item attributes reads them from `items`, joined as training joined them."""
    from service.engine import Engine, newest_version
    from training import attributes
    from training.data import read_aliccp

    engine = Engine(newest_version(model_dir))
    c = engine.contract
    table = None if items is None else attributes.read_item_table(items)
    s = read_aliccp(data, split, attributes.without_numeric(c), orphans="ignore")
    s = attributes.append(s, c, table)
    uid, uw = c.hash_side("user", np.asarray(s.user_ids), np.asarray(s.user_vals))
    reprs = np.concatenate(
        [engine.user_repr(uid[a : a + CHUNK], uw[a : a + CHUNK]) for a in range(0, len(uid), CHUNK)]
    )
    out: dict[str, list[np.ndarray]] = {"pctr": [], "pcvr": [], "pctcvr": []}
    for a in range(0, len(s), CHUNK):
        iid, iw = c.hash_side("item", s.item_ids[a : a + CHUNK], s.item_vals[a : a + CHUNK])
        rows = np.asarray(s.row_user[a : a + CHUNK])
        users, index = np.unique(rows, return_inverse=True)
        scores = engine.score(reprs[users], index.astype(np.int64), iid, iw)
        for k in out:
            out[k].append(getattr(scores, k))
    return np.asarray(s.sample_id), {k: np.concatenate(v) for k, v in out.items()}


def write_csv(path: Path, sample_id: np.ndarray, p: dict[str, np.ndarray]) -> None:
    """Ids exactly (int64 beyond 2^53 too), probabilities to 9 significant digits."""
    with open(path, "w") as f:
        f.write("sample_id,pctr,pcvr,pctcvr\n")
        probs = (p[k].tolist() for k in ("pctr", "pcvr", "pctcvr"))
        rows = zip(sample_id.tolist(), *probs, strict=True)
        f.writelines(f"{s},{a:.9g},{b:.9g},{c:.9g}\n" for s, a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker predict", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a model version folder, or a folder whose newest version is used",
    )
    p.add_argument("--data", type=Path, required=True, help="a folder in the raw Ali-CCP layout")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument(
        "--items",
        type=Path,
        help="the item table a model trained with numeric attributes (ranker train --items) "
        "reads them from",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    try:
        sample_id, probs = predict(args.model, args.data, args.split, args.items)
    except FileNotFoundError as e:
        p.error(str(e))
    write_csv(args.out, sample_id, probs)
    log.info(
        "%d impressions scored into %s in %.1f s",
        len(sample_id),
        args.out,
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
