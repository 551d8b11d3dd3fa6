"""The encoded split: one split of impressions as fixed-width arrays of raw ids and values, what
every reader writes (the Ali-CCP readers, the columnar one and the spec's), and what they share:
the read report, the label policy, the array writer and read progress.

The arrays hold raw feature ids (-1 = padding) and values; hashing to embedding rows happens per
batch through the feature contract, the same code the service runs.

Labels. ESMM's funnel is impression -> click -> conversion, so a conversion without a click
(Ali-CCP has a few) contradicts the model. `OrphanPolicy` decides: "drop" (the default, as the
reference preprocessors of AITM and torch-rechub do) skips the row, "click" keeps it as a click
that converted, "ignore" keeps it as an unconverted non-click. Every case is counted.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from features.contract import FeatureContract
from training.progress import EVERY_S, Progress

log = logging.getLogger(__name__)

OrphanPolicy = Literal["drop", "click", "ignore"]
MAX_LOGGED_MALFORMED = 20


class MalformedLine(ValueError):
    """A line that cannot be parsed; the message says why."""


@dataclasses.dataclass
class ReadReport:
    lines: int = 0
    rows: int = 0
    malformed: int = 0
    orphan_conversions: int = 0
    dropped_orphans: int = 0
    unknown_fields: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def bad_line(self, file: str, line_no: int, reason: str) -> None:
        self.malformed += 1
        msg = f"{file}:{line_no}: {reason}"
        if len(self.examples) < MAX_LOGGED_MALFORMED:
            self.examples.append(msg)
            log.warning("skipping malformed line %s", msg)
        elif len(self.examples) == MAX_LOGGED_MALFORMED:
            self.examples.append("...")
            log.warning("more malformed lines follow; only their count is reported")


@dataclasses.dataclass
class EncodedSplit:
    """One split as fixed-width raw arrays. Users are indexed by `row_user`."""

    user_ids: np.ndarray  # (U, user width) int64 raw ids, -1 = padding
    user_vals: np.ndarray  # (U, user width) float32
    item_ids: np.ndarray  # (N, item width) int64
    item_vals: np.ndarray  # (N, item width) float32
    row_user: np.ndarray  # (N,) int64 index into the user arrays
    click: np.ndarray  # (N,) uint8
    conv: np.ndarray  # (N,) uint8, conversion and click
    sample_id: np.ndarray  # (N,) int64
    report: ReadReport
    action: np.ndarray | None = None  # (N,) uint8, post-click action and click; None: no label
    # (N,) int64 request of each row, where user rows are not per request (a spec's: one per
    # user); training shuffles and splits by requests. None: the user rows are the requests
    # (Ali-CCP's common features are per session).
    session: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.click)

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        users: int,
        rows: int,
        report: ReadReport,
        action: np.ndarray | None = None,
    ) -> EncodedSplit:
        """The first `users` and `rows` of SplitWriter's arrays, by their names (in memory, or
        mapped back from their .npy files)."""
        a, u, n = arrays, users, rows
        return cls(
            a["user_ids"][:u],
            a["user_vals"][:u],
            a["item_ids"][:n],
            a["item_vals"][:n],
            a["row_user"][:n],
            a["click"][:n],
            a["conv"][:n],
            a["sample_id"][:n],
            report,
            action,
        )

    @property
    def sessions(self) -> np.ndarray:
        """(N,) the request of each row: what training keeps together and splits by."""
        return self.row_user if self.session is None else self.session

    def take(self, rows: np.ndarray) -> EncodedSplit:
        """A subset of rows with only the users they use (rows keep their order)."""
        users, row_user = np.unique(self.row_user[rows], return_inverse=True)
        return EncodedSplit(
            np.asarray(self.user_ids[users]),
            np.asarray(self.user_vals[users]),
            np.asarray(self.item_ids[rows]),
            np.asarray(self.item_vals[rows]),
            row_user.astype(np.int64),
            np.asarray(self.click[rows]),
            np.asarray(self.conv[rows]),
            np.asarray(self.sample_id[rows]),
            self.report,
            None if self.action is None else np.asarray(self.action[rows]),
            None if self.session is None else np.asarray(self.session[rows]),
        )


def labels_by_policy(
    click: str, conv: str, policy: OrphanPolicy, report: ReadReport
) -> tuple[int, int] | None:
    """(click, conversion) of a line's two label columns under `policy`; None: a dropped orphan."""
    if click not in ("0", "1") or conv not in ("0", "1"):
        raise MalformedLine(f"labels must be 0 or 1, got click={click!r} conversion={conv!r}")
    c, v = int(click), int(conv)
    if v and not c:
        report.orphan_conversions += 1
        if policy == "drop":
            report.dropped_orphans += 1
            return None
        return (1, 1) if policy == "click" else (0, 0)
    return c, v


def read_progress(name: str, total: int, every_s: float = EVERY_S) -> Progress:
    """`read FILE: done / total lines (pct), rate, ETA` every `every_s` seconds of one file's
    read (training/progress.py), and the read's total at the end."""
    return Progress(log, f"read {name}", total, unit="lines", every_s=every_s)


def count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


# ---- writing fixed-width arrays -------------------------------------------------------------
class SplitWriter:
    """Fills the arrays of one split, in memory or as .npy files on disk."""

    def __init__(
        self, contract: FeatureContract, max_users: int, max_rows: int, out_dir: Path | None = None
    ):
        self.contract, self.out_dir = contract, out_dir
        uw, iw = contract.width("user"), contract.width("item")
        self.arrays = {
            "user_ids": self._alloc("user_ids", (max_users, uw), np.int64, -1),
            "user_vals": self._alloc("user_vals", (max_users, uw), np.float32, 0),
            "item_ids": self._alloc("item_ids", (max_rows, iw), np.int64, -1),
            "item_vals": self._alloc("item_vals", (max_rows, iw), np.float32, 0),
            "row_user": self._alloc("row_user", (max_rows,), np.int64, 0),
            "click": self._alloc("click", (max_rows,), np.uint8, 0),
            "conv": self._alloc("conv", (max_rows,), np.uint8, 0),
            "sample_id": self._alloc("sample_id", (max_rows,), np.int64, 0),
        }
        self.n_users = self.n_rows = 0

    def _alloc(self, name: str, shape: tuple, dtype, fill) -> np.ndarray:
        if self.out_dir is None:
            return np.full(shape, fill, dtype=dtype)
        arr = np.lib.format.open_memmap(
            self.out_dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
        )
        if fill:
            arr[:] = fill
        return arr

    def add_user(self, feats: dict) -> int:
        ids, vals = self.contract.encode_entity("user", feats)
        self.arrays["user_ids"][self.n_users] = ids
        self.arrays["user_vals"][self.n_users] = vals
        self.n_users += 1
        return self.n_users - 1

    def add_row(self, sample_id: int, click: int, conv: int, user: int, feats: dict) -> None:
        ids, vals = self.contract.encode_entity("item", feats)
        a, i = self.arrays, self.n_rows
        a["item_ids"][i], a["item_vals"][i] = ids, vals
        a["row_user"][i], a["click"][i], a["conv"][i], a["sample_id"][i] = (
            user,
            click,
            conv,
            sample_id,
        )
        self.n_rows += 1

    def finish(self, report: ReadReport) -> EncodedSplit:
        a = self.arrays
        if self.out_dir is not None:
            for arr in a.values():
                arr.flush()
        u, n = self.n_users, self.n_rows
        report.rows = n
        return EncodedSplit.from_arrays(a, u, n, report)
