"""What a model costs the service per candidate and per cached user: its exported item scorer
timed on one thread (microseconds a candidate row, one user's N candidates a run, as /rank
sends them), its user tower per user, and the user representation's bytes (what the user
cache and the Redis tier hold per user).

    python -m training.scorer_cost MODEL_DIR [MODEL_DIR ...] [--rows 500] [--users 1]

Models are compared in one process, alternating, so the machine's drift falls on all of them
alike; the figure is the median of `--rounds` rounds. The inputs are the model's own sample
rows (samples.npz: real users and items of its test split), tiled to `--rows` candidates;
`--users U` spreads them over U users, as the service's batcher joins concurrent requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from service.engine import Engine, ScorerOptions
from training.cli import prog as cli_prog
from training.export import sample_case


class Model:
    """One exported model as the service loads it (one CPU thread, plain runs) and a run of
    `rows` candidates over `users` users."""

    def __init__(self, folder: Path, rows: int, users: int = 1):
        self.folder = folder
        self.engine = e = Engine(folder, "cpu", 1, ScorerOptions(io_binding="off"))
        samples = dict(np.load(folder / e.manifest.samples))
        case = sample_case(e.contract, samples, len(samples["row_user"]))
        pick = np.resize(np.nonzero(case["user_index"] == 0)[0], rows)  # the first user's, tiled
        self.user = (case["user_ids"][:1], case["user_weights"][:1])
        user_repr = e.user_repr(*self.user)
        self.repr_bytes = int(user_repr.nbytes)
        self.run = (
            np.repeat(user_repr, users, axis=0),
            np.arange(rows, dtype=np.int64) % users,
            case["item_ids"][pick],
            case["item_weights"][pick],
        )
        self.rows = rows

    def time_scorer(self, seconds: float) -> float:
        """Microseconds a candidate row over repeated runs of `seconds`."""
        return _repeat(lambda: self.engine.score_raw(*self.run), seconds) / self.rows * 1e6

    def time_user(self, seconds: float) -> float:
        """Microseconds the user tower takes for one user."""
        return _repeat(lambda: self.engine.user_repr(*self.user), seconds) * 1e6


def _repeat(fn, seconds: float) -> float:
    """Mean seconds a call, after a warm-up call, over at least `seconds`."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        fn()
        n += 1
    return elapsed / n


def measure(
    folders: list[Path], rows: int, seconds: float, rounds: int, users: int = 1
) -> list[dict]:
    models = [Model(f, rows, users) for f in folders]
    scorer = {m.folder: [] for m in models}
    user = {m.folder: [] for m in models}
    for _ in range(rounds):
        for m in models:
            scorer[m.folder].append(m.time_scorer(seconds))
            user[m.folder].append(m.time_user(seconds / 4))
    base = statistics.median(scorer[models[0].folder])
    out = []
    for m in models:
        us = statistics.median(scorer[m.folder])
        out.append(
            {
                "model": str(m.folder),
                "scorer_us_per_row": round(us, 3),
                "scorer_vs_first": round(us / base, 3),
                "user_tower_us": round(statistics.median(user[m.folder]), 1),
                "user_repr_bytes": m.repr_bytes,
                "rows_per_run": rows,
                "users_per_run": users,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog=cli_prog("training.scorer_cost"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", type=Path, nargs="+", help="exported model folders (the first is 1x)")
    p.add_argument("--rows", type=int, default=500, help="candidates a run (one user)")
    p.add_argument("--users", type=int, default=1, help="users the candidates belong to")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per model and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is kept")
    a = p.parse_args(argv)
    if min(a.rows, a.users, a.rounds) < 1 or a.seconds <= 0:
        p.error("--rows, --users, --seconds and --rounds must be positive")
    for row in measure(a.models, a.rows, a.seconds, a.rounds, a.users):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
