"""Ali-CCP's combination fields rebuilt from ids alone, for a model that leaves them out (`--without
508,509,702,853`: what an id-only /rank request can serve, which has no per-impression
combination ids). Each combination field counts the user's list members that are the item's
own attribute (508: the item's category among the user's 109_14 categories; 509 shop, 702
brand, 853 intents: `features/contract.py COMBINES`), but the two sides name one category by
different ids, with no rule between them: real Ali-CCP hashes every field's values into one id
space. So the rule is learned here, from the training rows, where the files carry the
combination fields beside both sides: per item id X of the field, the id Y of the list that is
in the user's list exactly where the combination field is present. The aligned interaction
(training/interactions.py `AlignedMatches`) then finds the candidate's Y in the user's cached
list, as exact matches do for a spec's shared groups.

The evidence per (X, Y) comes in units (`learn`: a user and the ids of the item field the user
met): those whose list holds Y, with the field and without it. The true Y is in the list of
every unit with the field and of none without; X's aligned Y is the one in the most units with
the field (at least `MIN_UNITS`), at most `TOLERANCE` of its units without. A single-valued
field is there where its value is above 0, as the counts interaction reads it (a file may write
0 for no match). An X whose best two Ys tie is left unaligned. How well it holds is measured on
the validation rows, which the learning did not read: recall (of the rows with the field, those
whose user's list holds an aligned partner of the item's ids) and precision (of the rows whose
list holds one, those with the field). Precision says whether the rule is right: a pair whose
precision is below `MIN_PRECISION` is left out, as its combination field counts something else
than these matches. Recall says how much of the field the rule covers: ids seen too seldom, or
tied, are not aligned, and their matches are not found."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from features.contract import KEY_FIELDS, FeatureContract
from training.batches import spaced
from training.config import POOLING, TrainConfig
from training.encoded import EncodedSplit
from training.inputs import cache_dir
from training.splits import load_split

log = logging.getLogger("training.alignment")

TOLERANCE = 0.02  # at most this share of an aligned (X, Y)'s units may lack the field
MIN_UNITS = 3  # an X's aligned Y is in the lists of this many units with the field at least
MIN_PRECISION = 0.9  # a pair is used where its precision on validation rows reaches this
# `auto` leaves the combination fields out where every one's rule holds and rebuilds at least
# this share of its validation rows (recall): the id-only model was measured above the one that
# reads the fields on three presets whose lowest recall was 0.82 (docs/model-evidence.md)
MIN_RECALL = 0.8
LEARN_ROWS = 2_000_000  # at most this many training rows are read (evenly spaced)
CHECK_ROWS = 500_000  # ... and this many validation rows measure it
PAIRS_PER_CHUNK = 1 << 23  # (item id, list member) pairs counted at a time
DENSE = 1 << 24  # pairs counted by bincount where the ids' numbers span at most this many


@dataclasses.dataclass
class Alignment:
    """One combination field's rule, learned: its (list, item field, combination field), each
    aligned item id X (raw) with its list id Y (raw), and how it held on validation rows."""

    names: tuple[str, str, str]
    item_ids: np.ndarray  # (A,) raw ids of the item field that have an aligned list id
    list_ids: np.ndarray  # (A,) their list ids
    units: np.ndarray  # (A,) the units with the field each was learned from
    recall: float
    precision: float
    val_rows: int  # validation rows holding the item field
    seconds: float = 0.0  # to learn it and measure it

    @property
    def holds(self) -> bool:
        return len(self.item_ids) > 0 and self.precision >= MIN_PRECISION

    def figures(self) -> dict:
        return {
            "aligned_ids": int(len(self.item_ids)),
            "recall": self.recall,
            "precision": self.precision,
            "val_rows": self.val_rows,
            "holds": self.holds,
            "seconds": self.seconds,
        }


def rebuilds(alignments: list[Alignment], fields: list[str]) -> tuple[bool, str]:
    """Whether `auto` leaves the combination `fields` out (each one's rule holds and rebuilds
    at least MIN_RECALL of its validation rows), and why, in words for the run's log."""
    by = {a.names[2]: a for a in alignments}
    short = []
    for c in fields:
        a = by.get(c)
        if a is None or not a.holds:
            short.append(f"{c}'s rule does not hold")
        elif a.recall < MIN_RECALL:
            short.append(f"{c}'s rule rebuilds {a.recall:.3f} of its rows, below {MIN_RECALL}")
    if not fields or short:
        return False, "; ".join(short) or "no combination field is read"
    covered = ", ".join(f"{c} {by[c].recall:.3f}" for c in fields)
    return True, f"every rule holds, rebuilding {covered} of the validation rows with the field"


def fit_alignments(
    cfg: TrainConfig, split: EncodedSplit, train: np.ndarray, val: np.ndarray
) -> list[Alignment]:
    """The alignments of a run (`cfg`, a TrainConfig over an Ali-CCP folder), whatever fields
    its contract leaves out: learned on the same files read with every field (the default
    contract's cached split), its rows matched to `split`'s by sample id (a line whose
    combination field is malformed is in one and not the other), `train` rows learning and
    `val` rows measuring."""
    full = FeatureContract.default(cfg.max_len, **POOLING[cfg.pooling], seed=cfg.seed)
    every = load_split(cfg.data, "train", full, cache_dir(cfg), cfg.orphans)
    ids = np.asarray(every.sample_id)
    order = np.argsort(ids, kind="stable")

    def matched(rows: np.ndarray) -> np.ndarray:
        want = np.asarray(split.sample_id)[rows]
        at = np.minimum(np.searchsorted(ids, want, sorter=order), len(ids) - 1)
        return order[at][ids[order[at]] == want]

    return learn_alignments(full, every, matched(train), matched(val))


def learn_alignments(
    full: FeatureContract, split: EncodedSplit, train: np.ndarray, val: np.ndarray
) -> list[Alignment]:
    """Every combination field of the `full` contract (one that reads them) aligned on
    `split`'s `train` rows and measured on its `val` rows."""
    out = []
    for combo, (lst, item) in full.combines().items():
        t0 = time.perf_counter()
        a = learn(full, split, spaced(train, LEARN_ROWS), (lst, item, combo))
        a.recall, a.precision, a.val_rows = agreement(full, split, spaced(val, CHECK_ROWS), a)
        a.seconds = time.perf_counter() - t0
        log.info(
            "aligned %s x %s (for %s): %d item ids, validation recall %.4f, precision %.4f "
            "(%d rows, %.1f s)%s",
            lst,
            item,
            combo,
            len(a.item_ids),
            a.recall,
            a.precision,
            a.val_rows,
            a.seconds,
            "" if a.holds else f"; precision below {MIN_PRECISION}: left out",
        )
        out.append(a)
    return out


def learn(
    full: FeatureContract, split: EncodedSplit, rows: np.ndarray, names: tuple[str, str, str]
) -> Alignment:
    """One combination field's alignment from `rows` (the module's rule). The evidence comes
    in units, not rows: one per user and set of the item field's ids the user met. A user's
    sessions repeat one list, so rows of one user and one category say one thing, however many.
    A unit counts where the field counts all of its ids (each one's partner is in the list) or
    none; with a multi-valued item field (intents), a count in between does not say whose
    partner is there, and the unit is left out. Each unit's ids X then meet each member Y of
    the user's list, counted with the field and without. Ids are numbered first (X per unit, Y
    per list), so a pair is one integer, counted by bincount where the numbers span at most
    DENSE pairs."""
    lst, item, combo = names
    ids = _item(full, split, rows, item)
    has = _count(full, split, rows, combo)
    sessions, row_session = np.unique(np.asarray(split.row_user[rows]), return_inverse=True)
    owner = _owners(full, split, sessions)  # (sessions,) the user each session is
    # the units: (user, the row's ids of the item field)
    _, ids_of = np.unique(np.sort(ids, axis=1), axis=0, return_inverse=True)
    unit = owner[row_session] * (ids_of.max(initial=0) + 1) + ids_of.reshape(-1)
    _, first, inverse = np.unique(unit, return_index=True, return_inverse=True)
    # the units that say something: the field counts every one of their ids, or none
    n = (ids >= 0).sum(1)
    rows_of = np.bincount(inverse)
    counts_all = np.bincount(inverse, weights=(has >= n) & (n > 0)) == rows_of
    counts_none = np.bincount(inverse, weights=has == 0) == rows_of
    said = np.flatnonzero(counts_all | counts_none)
    first, flag = first[said], counts_all[said]
    at, col = np.nonzero(ids[first] >= 0)  # each unit's item ids
    ux, xi = np.unique(ids[first][at, col], return_inverse=True)
    session, flag = row_session[first][at], flag[at]
    members = _members(full, split, sessions, lst)
    uy, yi = np.unique(members[members >= 0], return_inverse=True)
    numbered = np.full(members.shape, -1, np.int64)
    numbered[members >= 0] = yi
    dense = len(ux) * len(uy) <= DENSE
    counts = [np.zeros(len(ux) * len(uy) if dense else 0, np.int64) for _ in range(2)]
    keys, flags = [], []
    for part in _chunks(len(session), max(1, PAIRS_PER_CHUNK // max(members.shape[1], 1))):
        y = numbered[session[part]]  # (k, list columns)
        k, j = np.nonzero(y >= 0)
        key = xi[part][k] * len(uy) + y[k, j]
        if dense:
            counts[0] += np.bincount(key, minlength=len(counts[0]))
            counts[1] += np.bincount(key[flag[part][k]], minlength=len(counts[1]))
        else:
            keys.append(key)
            flags.append(flag[part][k])
    if dense:
        key = np.flatnonzero(counts[0])
        every, with_field = counts[0][key], counts[1][key]
    else:
        key, inverse = np.unique(
            np.concatenate(keys or [np.zeros(0, np.int64)]), return_inverse=True
        )
        every = np.bincount(inverse, minlength=len(key))
        with_field = np.bincount(
            inverse[np.concatenate(flags or [np.zeros(0, bool)])], minlength=len(key)
        )
    ok = (every - with_field <= TOLERANCE * every) & (with_field >= MIN_UNITS)
    px, py, pw = ux[key[ok] // len(uy)], uy[key[ok] % len(uy)], with_field[ok]
    order = np.lexsort((py, -pw, px))  # per X, the Y with the most units first
    px, py, pw = px[order], py[order], pw[order]
    first = np.r_[True, px[1:] != px[:-1]] if len(px) else np.zeros(0, bool)
    # an X whose best two Ys tie is left unaligned: its evidence does not say which it is (a
    # popular Y is in every list a rare X's partner is, as often as not)
    tied = np.r_[(px[1:] == px[:-1]) & (pw[1:] == pw[:-1]), False]
    first &= ~tied
    return Alignment(names, px[first], py[first], pw[first].astype(np.int64), 0.0, 0.0, 0)


def _owners(full, split, sessions) -> np.ndarray:
    """(sessions,) a number per user the sessions are: by the user key field (101) where the
    session has it, else the session's own."""
    key = np.asarray(split.user_ids[:, _cols(full, "user", KEY_FIELDS[0]).start][sessions])
    own = np.where(key >= 0, key, -2 - np.asarray(sessions))
    return np.unique(own, return_inverse=True)[1]


def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))


def agreement(
    full: FeatureContract, split: EncodedSplit, rows: np.ndarray, a: Alignment
) -> tuple[float, float, int]:
    """(recall, precision, rows) of `a` on `rows`: of the rows with the combination field,
    those whose user's list holds an aligned id of the item's; of the rows whose list holds
    one, those with the field."""
    lst, item, combo = a.names
    ids = _item(full, split, rows, item)
    found = np.zeros(len(rows), bool)
    order = np.argsort(a.item_ids)
    sx, sy = a.item_ids[order], a.list_ids[order]
    for lo in range(0, len(rows), 65536):  # the members of 65,536 rows' users at a time
        part = slice(lo, lo + 65536)
        members = _list(full, split, rows[part], lst)
        for j in range(ids.shape[1] if len(sx) else 0):
            col = ids[part, j]
            at = np.minimum(np.searchsorted(sx, col), len(sx) - 1)
            hit = (col >= 0) & (sx[at] == col)
            target = np.where(hit, sy[at], -2)  # -2: no member's id
            found[part] |= (members == target[:, None]).any(1)
    has_item = (ids >= 0).any(1)
    present = _count(full, split, rows, combo) > 0
    present, found = present[has_item], found[has_item]
    recall = float(found[present].mean()) if present.any() else 0.0
    precision = float(present[found].mean()) if found.any() else 0.0
    return recall, precision, int(has_item.sum())


def _count(full, split, rows, combo) -> np.ndarray:
    """(len(rows),) the matches the combination field counts at each row, as the counts
    interaction reads it (training/interactions.py CombinationCounts.counts): a multi-valued
    field's ids, a single-valued one's id where its value is above 0 (a file may write 0 for
    no match)."""
    cols = _cols(full, "item", combo)
    present = np.asarray(split.item_ids[:, cols][rows]) >= 0
    if cols.stop - cols.start == 1:
        present &= np.asarray(split.item_vals[:, cols][rows]) > 0
    return present.sum(1)


def _cols(contract: FeatureContract, side: str, name: str) -> slice:
    (c,) = [c for f, c in contract.columns(side) if f.name == name]
    return c


def _item(full, split, rows, name) -> np.ndarray:
    """(rows, columns) the raw ids of an item field at `rows` (only its columns are read)."""
    return np.asarray(split.item_ids[:, _cols(full, "item", name)][rows])


def _list(full, split, rows, name) -> np.ndarray:
    """(rows, columns) the raw ids of each row's user's list `name`."""
    return _members(full, split, np.asarray(split.row_user[rows]), name)


def _members(full, split, users, name) -> np.ndarray:
    """(users, columns) the raw ids of the users' list `name`."""
    return np.asarray(split.user_ids[:, _cols(full, "user", name)][users])
