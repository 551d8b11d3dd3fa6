"""Readers for Ali-CCP logs and the encoded arrays the trainer batches from.

Raw layout (what users have):
  common_features_{split}.csv   common_feature_index,feature_num,feature_list      (user side)
  sample_skeleton_{split}.csv   sample_id,click,conversion,common_feature_index,feature_num,
                                feature_list                                        (impressions)
feature_list joins features with 0x01; a feature is field 0x02 feature_id 0x03 value.

Reading streams: the common-features table is held (as fixed-width arrays, one row per
common_feature_index), the skeleton is read line by line into arrays of known size on disk
(`np.lib.format.open_memmap`), so memory does not grow with the skeleton. A malformed line is
counted, logged with its file and line number, and skipped.

Labels. ESMM's funnel is impression -> click -> conversion, so a conversion without a click
(Ali-CCP has a few) contradicts the model. `OrphanPolicy` decides: "drop" (the default, as the
reference preprocessors of AITM and torch-rechub do) skips the row, "click" keeps it as a click
that converted, "ignore" keeps it as an unconverted non-click. Every case is counted.

The arrays hold raw feature ids (-1 = padding) and values; hashing to embedding rows happens per
batch through the feature contract, the same code the service runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from features.contract import FeatureContract, Side
from training.progress import EVERY_S, Progress

log = logging.getLogger(__name__)

OrphanPolicy = Literal["drop", "click", "ignore"]
Reader = Literal["columnar", "python"]
FORMAT_VERSION = 1
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


# ---- parsing ------------------------------------------------------------------------------
def parse_feature_list(
    text: str, feature_num: int | None = None
) -> dict[str, tuple[list[int], list[float]]]:
    """`f\\x02id\\x03v\\x01...` -> {field: (ids, values)}, ids in order of appearance."""
    if not text:
        if feature_num:
            raise MalformedLine(f"feature_num is {feature_num} but the feature list is empty")
        return {}
    # One split for the whole list (C speed); the three separators must then line up exactly.
    tokens = text.replace("\x02", "\x01").replace("\x03", "\x01").split("\x01")
    n = text.count("\x01") + 1
    if len(tokens) != 3 * n or text.count("\x02") != n or text.count("\x03") != n:
        raise MalformedLine(f"a feature of {text[:60]!r}... is not field\\x02id\\x03value")
    if feature_num is not None and n != feature_num:
        raise MalformedLine(f"feature_num is {feature_num} but {n} features follow")
    try:
        ids = list(map(int, tokens[1::3]))
        vals = list(map(float, tokens[2::3]))
    except ValueError as e:
        raise MalformedLine(f"non-numeric feature id or value ({e})") from None
    if min(ids) < 0 or not all(map(math.isfinite, vals)):
        raise MalformedLine("negative feature id or non-finite value")
    out: dict[str, tuple[list[int], list[float]]] = {}
    for field, i, v in zip(tokens[0::3], ids, vals, strict=True):
        group = out.get(field)
        if group is None:
            out[field] = group = ([], [])
        group[0].append(i)
        group[1].append(v)
    return out


def _split_features(contract: FeatureContract, side: Side, feats: dict, report: ReadReport) -> dict:
    """Drop (and count) fields the contract does not place on this side."""
    known = {f.name for f in contract.side_fields(side)}
    unknown = [k for k in feats if k not in known]
    for k in unknown:
        report.unknown_fields += 1
        del feats[k]
    return feats


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
        return EncodedSplit(
            a["user_ids"][:u],
            a["user_vals"][:u],
            a["item_ids"][:n],
            a["item_vals"][:n],
            a["row_user"][:n],
            a["click"][:n],
            a["conv"][:n],
            a["sample_id"][:n],
            report,
        )


def _labels(
    click: str, conv: str, policy: OrphanPolicy, report: ReadReport
) -> tuple[int, int] | None:
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


def numbered_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per line; text is None where the bytes are not UTF-8."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield n, None


def parse_common_line(line: str | None) -> tuple[str, dict[str, tuple[list[int], list[float]]]]:
    """One line of common_features_*.csv (None: not UTF-8) -> (common_feature_index, its
    features); MalformedLine (or ValueError on a non-integer feature_num) says what is wrong."""
    if line is None:
        raise MalformedLine("not UTF-8")
    parts = line.split(",", 2)
    if len(parts) != 3:
        raise MalformedLine(f"expected 3 comma-separated columns, got {len(parts)}")
    cfi, num, feats = parts
    return cfi, parse_feature_list(feats, int(num))


def parse_skeleton_line(
    line: str | None,
    contract: FeatureContract,
    users: dict[str, int],
    orphans: OrphanPolicy,
    report: ReadReport,
    common_name: str,
) -> tuple[str, tuple[int, int] | None, int, dict]:
    """One line of sample_skeleton_*.csv (None: not UTF-8) -> (sample_id as written, labels,
    user row, item features); labels None for an orphan conversion the policy drops, whose
    sample_id is then never read (the caller converts it for kept rows only). Both readers judge
    a line here; MalformedLine (or ValueError on a non-integer) says what is wrong."""
    if line is None:
        raise MalformedLine("not UTF-8")
    parts = line.split(",", 5)
    if len(parts) != 6:
        raise MalformedLine(f"expected 6 comma-separated columns, got {len(parts)}")
    sid, click, conv, cfi, num, feats = parts
    labels = _labels(click, conv, orphans, report)
    if cfi not in users:
        raise MalformedLine(f"common_feature_index {cfi!r} is not in {common_name}")
    parsed = _split_features(contract, "item", parse_feature_list(feats, int(num)), report)
    return sid, labels, users[cfi], parsed


# ---- the raw Ali-CCP layout -----------------------------------------------------------------
def read_aliccp(
    data_dir: Path,
    split: str,
    contract: FeatureContract,
    out_dir: Path | None = None,
    orphans: OrphanPolicy = "drop",
) -> EncodedSplit:
    """Read `{common_features,sample_skeleton}_{split}.csv` from data_dir into arrays."""
    common = Path(data_dir) / f"common_features_{split}.csv"
    skeleton = Path(data_dir) / f"sample_skeleton_{split}.csv"
    for p in (common, skeleton):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing (expected the raw Ali-CCP layout)")
    report = ReadReport()
    writer = SplitWriter(contract, count_lines(common), count_lines(skeleton), out_dir)
    users: dict[str, int] = {}
    progress = read_progress(common.name, writer.arrays["user_ids"].shape[0])
    for n, line in numbered_lines(common):
        report.lines += 1
        if not n % 1024:
            progress.update(n)
        try:
            cfi, feats = parse_common_line(line)
            if cfi in users:
                raise MalformedLine(f"common_feature_index {cfi} appears twice")
            feats = _split_features(contract, "user", feats, report)
            users[cfi] = writer.add_user(feats)
        except (MalformedLine, ValueError) as e:
            report.bad_line(common.name, n, str(e))
    progress.finish()
    progress = read_progress(skeleton.name, writer.arrays["click"].shape[0])
    for n, line in numbered_lines(skeleton):
        report.lines += 1
        if not n % 1024:
            progress.update(n)
        try:
            sid, labels, user, parsed = parse_skeleton_line(
                line, contract, users, orphans, report, common.name
            )
            if labels is not None:
                writer.add_row(int(sid), *labels, user, parsed)
        except (MalformedLine, ValueError) as e:
            report.bad_line(skeleton.name, n, str(e))
    progress.finish()
    return writer.finish(report)


# ---- PaddleRec's preprocessed text format (../shared/data/PaddleRec/esmm) -------------------
def read_paddlerec(
    path: Path, contract: FeatureContract, orphans: OrphanPolicy = "drop"
) -> EncodedSplit:
    """`sample_idx,click,conversion,field:id,...`: all 23 fields, values dropped (1.0).

    Each line carries its own user features, so each line is its own user row."""
    path = Path(path)
    n_lines = count_lines(path)
    writer, report = SplitWriter(contract, n_lines, n_lines), ReadReport()
    user_fields = {f.name for f in contract.side_fields("user")}
    for n, line in numbered_lines(path):
        report.lines += 1
        try:
            if line is None:
                raise MalformedLine("not UTF-8")
            parts = line.split(",")
            if len(parts) < 4:
                raise MalformedLine("expected sample_idx,click,conversion,field:id,...")
            user: dict = {}
            item: dict = {}
            for tok in parts[3:]:
                field, sep, fid = tok.partition(":")
                if not sep or not fid.isdigit():
                    raise MalformedLine(f"feature {tok[:40]!r} is not field:id")
                side = user if field in user_fields else item
                ids, vals = side.setdefault(field, ([], []))
                ids.append(int(fid))
                vals.append(1.0)
            labels = _labels(parts[1], parts[2], orphans, report)
            user = _split_features(contract, "user", user, report)
            item = _split_features(contract, "item", item, report)
            if labels is not None:
                writer.add_row(int(parts[0]), *labels, writer.add_user(user), item)
        except (MalformedLine, ValueError) as e:
            report.bad_line(path.name, n, str(e))
    return writer.finish(report)


# ---- the on-disk cache of encoded splits ----------------------------------------------------
def _cache_key(data_dir: Path, split: str, contract: FeatureContract, orphans: OrphanPolicy) -> str:
    files = [Path(data_dir) / f"{p}_{split}.csv" for p in ("common_features", "sample_skeleton")]
    stat = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    lens = {f.name: f.max_len for f in contract.fields}
    blob = json.dumps([FORMAT_VERSION, stat, lens, orphans], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_split(
    data_dir: Path,
    split: str,
    contract: FeatureContract,
    cache_dir: Path,
    orphans: OrphanPolicy = "drop",
    reader: Reader = "columnar",
) -> EncodedSplit:
    """Read a split once into `cache_dir/<split>-<key>/` and memory-map it afterwards.

    `reader` picks the columnar reader (training/columnar.py, the default: a 10 GB file in
    minutes) or `read_aliccp`, the line-by-line reference; both write the same arrays and report,
    so the cache does not depend on which one filled it."""
    key = _cache_key(data_dir, split, contract, orphans)
    target = Path(cache_dir) / f"{split}-{key}"
    meta_path = target / "meta.json"
    if not meta_path.is_file():
        # Written beside the target and renamed into place: an interrupted read leaves no cache.
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if reader == "columnar":
            from training.columnar import read_columnar

            split_data = read_columnar(data_dir, split, contract, tmp, orphans)
        elif reader == "python":
            split_data = read_aliccp(data_dir, split, contract, tmp, orphans)
        else:
            raise ValueError(f"reader must be 'columnar' or 'python', got {reader!r}")
        meta = {
            "n_users": len(split_data.user_ids),
            "n_rows": len(split_data),
            "report": dataclasses.asdict(split_data.report),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        del split_data
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    meta = json.loads(meta_path.read_text())
    u, n = meta["n_users"], meta["n_rows"]
    arr = {p.stem: np.load(p, mmap_mode="r") for p in target.glob("*.npy")}
    return EncodedSplit(
        arr["user_ids"][:u],
        arr["user_vals"][:u],
        arr["item_ids"][:n],
        arr["item_vals"][:n],
        arr["row_user"][:n],
        arr["click"][:n],
        arr["conv"][:n],
        arr["sample_id"][:n],
        ReadReport(**meta["report"]),
        _cached_action(data_dir, split, target, arr["sample_id"][:n], arr["click"][:n]),
    )


def _cached_action(
    data_dir: Path, split: str, target: Path, sample_id: np.ndarray, click: np.ndarray
) -> np.ndarray | None:
    """read_action, kept beside the encoded split (keyed by the label file's size and mtime):
    parsing a 2M-line label file costs seconds, and a comparison loads each split per run."""
    path = Path(data_dir) / f"action_{split}.csv"
    if not path.is_file():
        return None
    st = path.stat()
    cached = target / f"action-{st.st_size}-{st.st_mtime_ns}.npy"
    if not cached.is_file():
        action = read_action(data_dir, split, np.asarray(sample_id), click)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.npy")
        np.save(tmp, action)
        os.replace(tmp, cached)
    return np.load(cached, mmap_mode="r")


def fit_contract(
    contract: FeatureContract, train: EncodedSplit, min_count: int | dict = 1, **kwargs
) -> FeatureContract:
    """Size the hash buckets of every table from the distinct raw ids in the training split (a
    shared table: of all its fields together); with min_count > 1 (or a table's own, a mapping),
    ids seen fewer times there share their table's rare row."""
    seen: dict[str, list[np.ndarray]] = {}
    for side, ids in (("user", train.user_ids), ("item", train.item_ids)):
        for f, cols in contract.columns(side):
            if f.numeric:
                continue
            col = np.unique(np.asarray(ids[:, cols]).ravel())
            seen.setdefault(f.table, []).append(col[col >= 0])
    distinct = {t: int(np.unique(np.concatenate(parts)).size) for t, parts in seen.items()}
    contract = contract.fit_buckets(distinct, **kwargs)
    if max(min_count.values(), default=1) <= 1 if isinstance(min_count, dict) else min_count <= 1:
        return contract
    # occurrences per impression: a user's ids once per row of the user; in chunks of rows, so
    # memory stays bounded on full-size data
    times = np.bincount(np.asarray(train.row_user), minlength=len(train.user_ids))
    counts: dict[str, np.ndarray] = {}
    for side, ids, t in (("user", train.user_ids, times), ("item", train.item_ids, None)):
        step = max(1, (1 << 24) // max(contract.width(side), 1))
        for a in range(0, len(ids), step):
            part = contract.bucket_counts(
                side, np.asarray(ids[a : a + step]), None if t is None else t[a : a + step]
            )
            for name, c in part.items():
                counts[name] = counts.get(name, 0) + c
    return contract.with_rare(counts, min_count)


# ---- batches --------------------------------------------------------------------------------
@dataclasses.dataclass
class Batch:
    """Model inputs for a batch of rows and the users they belong to (hashed to rows)."""

    user_ids: np.ndarray  # (U, user width) int64 embedding rows
    user_w: np.ndarray  # (U, user width) float32
    user_index: np.ndarray  # (B,) int64 row -> user
    item_ids: np.ndarray  # (B, item width) int64 embedding rows
    item_w: np.ndarray  # (B, item width) float32
    click: np.ndarray  # (B,) float32
    conv: np.ndarray  # (B,) float32
    rows: np.ndarray  # (B,) indices into the split
    action: np.ndarray | None = None  # (B,) float32, when the split has the label


def make_batch(split: EncodedSplit, contract: FeatureContract, rows: np.ndarray) -> Batch:
    users, user_index = np.unique(split.row_user[rows], return_inverse=True)
    uid, uw = contract.hash_side("user", split.user_ids[users], split.user_vals[users])
    iid, iw = contract.hash_side("item", split.item_ids[rows], split.item_vals[rows])
    return Batch(
        uid,
        uw,
        user_index.astype(np.int64),
        iid,
        iw,
        split.click[rows].astype(np.float32),
        split.conv[rows].astype(np.float32),
        rows,
        None if split.action is None else split.action[rows].astype(np.float32),
    )


def session_order(split: EncodedSplit, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` shuffled by session: sessions in random order, a session's rows together, so a
    batch holds few distinct users and each user's heavy features are pooled once."""
    sessions = np.asarray(split.sessions)[rows]
    rank = rng.permutation(_n_sessions(split))
    return rows[np.argsort(rank[sessions], kind="stable")]


def _n_sessions(split: EncodedSplit) -> int:
    if split.session is None:
        return len(split.user_ids)
    return int(np.asarray(split.session).max(initial=-1)) + 1


def iter_batches(
    split: EncodedSplit, contract: FeatureContract, rows: np.ndarray, batch_size: int
) -> Iterator[Batch]:
    for start in range(0, len(rows), batch_size):
        yield make_batch(split, contract, rows[start : start + batch_size])


def split_sessions(
    split: EncodedSplit, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation): a random `fraction` of sessions goes to validation."""
    rng = np.random.default_rng(seed)
    val_sessions = rng.random(_n_sessions(split)) < fraction
    is_val = val_sessions[np.asarray(split.sessions)]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def read_action(
    data_dir: Path, split: str, sample_id: np.ndarray, click: np.ndarray
) -> np.ndarray | None:
    """The optional post-click action label (action_{split}.csv: sample_id,action) aligned to
    `sample_id`, and-ed with click; None when the file is absent. Every row needs a label."""
    path = Path(data_dir) / f"action_{split}.csv"
    if not path.is_file():
        return None
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.int64)
    ids, labels = table[:, 0], table[:, 1]
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{path}: action labels must be 0 or 1")
    order = np.argsort(ids)
    pos = order[np.clip(np.searchsorted(ids, sample_id, sorter=order), 0, len(ids) - 1)]
    missing = ids[pos] != sample_id
    if missing.any():
        raise ValueError(
            f"{path}: no action label for {int(missing.sum())} rows (first sample_id "
            f"{int(sample_id[missing][0])})"
        )
    return (labels[pos].astype(np.uint8) & (np.asarray(click) > 0)).astype(np.uint8)


def read_truth(data_dir: Path, split: str, sample_id: np.ndarray) -> dict | None:
    """The generator's true probabilities aligned to `sample_id`, or None when absent."""
    path = Path(data_dir) / f"truth_{split}.csv"
    if not path.is_file():
        return None
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    ids = table[:, 0].astype(np.int64)
    order = np.argsort(ids)
    pos = order[np.searchsorted(ids, sample_id, sorter=order)]
    if not np.array_equal(ids[pos], sample_id):
        raise ValueError(f"{path} does not cover every sample_id of the {split} split")
    return {"p_click": table[pos, 1], "p_conversion": table[pos, 2]}
