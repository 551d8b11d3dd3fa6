"""The raw Ali-CCP layout, read line by line: the reference reader and the parsers that judge a
line (the columnar reader sends every line it cannot parse in columns through them).

  common_features_{split}.csv   common_feature_index,feature_num,feature_list      (user side)
  sample_skeleton_{split}.csv   sample_id,click,conversion,common_feature_index,feature_num,
                                feature_list                                        (impressions)
  action_{split}.csv, truth_{split}.csv                 optional: a post-click label, true rates
feature_list joins features with 0x01; a feature is field 0x02 feature_id 0x03 value.

Reading streams: the common-features table is held (as fixed-width arrays, one row per
common_feature_index), the skeleton is read line by line into arrays of known size on disk
(`np.lib.format.open_memmap`), so memory does not grow with the skeleton. A malformed line is
counted, logged with its file and line number, and skipped. Also here: PaddleRec's preprocessed
text format of the same data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from features.contract import FeatureContract, Side
from training.encoded import (
    EncodedSplit,
    MalformedLine,
    OrphanPolicy,
    ReadReport,
    SplitWriter,
    count_lines,
    labels_by_policy,
    read_progress,
)

# Values are stored as float32: the largest float64 that rounds to a finite one (float32's
# largest value plus just under half its last step); a value beyond it would be inf, and an inf
# weight turns a pooled embedding, and then the whole model, into NaN.
FLOAT32_LIMIT = float(np.nextafter(np.float64(np.finfo(np.float32).max) + 2.0**103, 0))
# Ids and sample ids are stored as int64: a longer number is a malformed line, not a crash.
INT64_MAX = 2**63 - 1


def int64(text: str, what: str) -> int:
    """An integer written in `text` that an int64 holds; ValueError (a malformed line) if it
    is not an integer, MalformedLine if it is beyond int64."""
    v = int(text)
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise MalformedLine(f"{what} {text[:40]} is beyond int64")
    return v


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
    if max(ids) > INT64_MAX:
        raise MalformedLine("feature id beyond int64 (above 2^63 - 1)")
    if max(map(abs, vals)) > FLOAT32_LIMIT:  # stored as float32: it would be inf there
        raise MalformedLine("non-finite value as a float32 (beyond 3.4e38)")
    out: dict[str, tuple[list[int], list[float]]] = {}
    for field, i, v in zip(tokens[0::3], ids, vals, strict=True):
        group = out.get(field)
        if group is None:
            out[field] = group = ([], [])
        group[0].append(i)
        group[1].append(v)
    return out


def split_features(contract: FeatureContract, side: Side, feats: dict, report: ReadReport) -> dict:
    """Drop (and count) fields the contract does not place on this side."""
    known = {f.name for f in contract.side_fields(side)}
    unknown = [k for k in feats if k not in known]
    for k in unknown:
        report.unknown_fields += 1
        del feats[k]
    return feats


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
    sample_id is then never read (the caller converts it for kept rows only, by `int64`). Both
    readers judge a line here; MalformedLine (or ValueError on a non-integer) says what is wrong."""
    if line is None:
        raise MalformedLine("not UTF-8")
    parts = line.split(",", 5)
    if len(parts) != 6:
        raise MalformedLine(f"expected 6 comma-separated columns, got {len(parts)}")
    sid, click, conv, cfi, num, feats = parts
    labels = labels_by_policy(click, conv, orphans, report)
    if cfi not in users:
        raise MalformedLine(f"common_feature_index {cfi!r} is not in {common_name}")
    parsed = split_features(contract, "item", parse_feature_list(feats, int(num)), report)
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
            feats = split_features(contract, "user", feats, report)
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
                writer.add_row(int64(sid, "sample_id"), *labels, user, parsed)
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
                ids.append(int64(fid, "feature id"))
                vals.append(1.0)
            labels = labels_by_policy(parts[1], parts[2], orphans, report)
            user = split_features(contract, "user", user, report)
            item = split_features(contract, "item", item, report)
            if labels is not None:
                writer.add_row(int64(parts[0], "sample_idx"), *labels, writer.add_user(user), item)
        except (MalformedLine, ValueError) as e:
            report.bad_line(path.name, n, str(e))
    return writer.finish(report)


# ---- the optional side files --------------------------------------------------------------
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
