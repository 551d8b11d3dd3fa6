"""The raw Ali-CCP layout read in columns: the same arrays and ReadReport as `read_aliccp`, at the
speed a 10 GB skeleton needs.

Why PyArrow (and not Polars). Past the line splitting, which numpy does on the raw bytes, the work
is three kinds of kernel: one regular expression per line (is it canonical?), casts of token
columns to int64 / float64, and a hash lookup of field names. Arrow has each (RE2,
fast_float-based casts, dictionary_encode), runs it on a string array built over the chunk's own
bytes without a copy, and releases the GIL, so two chunks are parsed at once on two threads.
Polars (2.1, tried first) measured no faster on these kernels (its regex 69 ms against RE2's 66
on a 32 MB chunk), converts every Arrow string to its own view layout first (about 100 ms for
the 5M tokens of a 32 MB skeleton chunk, a sixth of this reader's whole parse of it), and would
be a new dependency; pyarrow is one already.

How it stays exact. Each chunk of whole lines splits in two:
- fast lines: ASCII and canonical as a whole (`_SKELETON_LINE`, `_COMMON_LINE`: ids of at most
  18 digits, plain decimal values, no ',' or NUL in field names), with feature_num equal to the
  count of features, a known common_feature_index and values a float32 holds. These are parsed in
  columns, and nothing about them can be malformed but a repeated common_feature_index, checked
  in file order;
- every other line goes, in file order, through the reference's own parsers
  (`parse_common_line`, `parse_skeleton_line`, `split_features`) with the same checks
  in the same order as `read_aliccp`, so its verdict, message, counts and place among the first
  MAX_LOGGED_MALFORMED examples are the reference's. Such a line need not be malformed: a '\\r'
  in a value, a '+1' id or an 'inf' value gets the reference's answer, slowly.
Fields longer than their `max_len` keep the highest values (ties: first seen) in file order, as
`features.contract.truncate` does; values go through float64 to float32, as float() then numpy do.

Memory stays bounded: a chunk (`chunk_bytes` of whole lines; a few hundred MB of working arrays
each, `workers` + 1 in flight) is placed into a block of rows and written into SplitWriter's
files, beneath their mapping, so RSS does not grow with the output either.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import FeatureContract, Side
from training.aliccp import (
    FLOAT32_LIMIT,
    int64,
    parse_common_line,
    parse_skeleton_line,
    split_features,
)
from training.encoded import (
    EncodedSplit,
    MalformedLine,
    OrphanPolicy,
    ReadReport,
    SplitWriter,
    count_lines,
    read_progress,
)

DEFAULT_CHUNK_BYTES = 32 << 20
# The canonical lines, '\n' included; anything else is the reference parser's to judge.
_ID = r"[0-9]{1,18}"  # fits int64 (19 digits may not: the reference judges those lines)
_VALUE = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,3})?"
_FEATURE = r"[^\x00-\x03,\n]*\x02" + _ID + r"\x03" + _VALUE  # no byte below 4 in a name
_FEATURES = r"(?:" + _FEATURE + r"(?:\x01" + _FEATURE + r")*)?"
_COMMON_LINE = r"^[^,\n]*,[0-9]{1,9}," + _FEATURES + r"\n$"
_SKELETON_LINE = r"^" + _ID + r",[01],[01],[^,\n]*,[0-9]{1,9}," + _FEATURES + r"\n$"
_COMMA, _ONE = ord(","), ord("1")


# ---- chunks of whole lines --------------------------------------------------------------------
@dataclasses.dataclass
class _Chunk:
    """Whole lines of one file. `text` holds every line without its line end but followed by one
    '\\n' (empty where the line is not ASCII); `suspect` marks the lines the columns must not
    judge (not ASCII so far)."""

    raw: np.ndarray  # uint8, the chunk's bytes
    starts: np.ndarray  # (n,) line starts in raw
    ends: np.ndarray  # (n,) line ends in raw, before the '\n'
    text: np.ndarray  # uint8
    text_start: np.ndarray  # (n,) int64, line j is text[text_start[j] : text_end[j]]
    text_end: np.ndarray  # (n,) int64
    suspect: np.ndarray  # (n,) bool
    first: int = 0  # line number of the first line, once the chunks before it are counted

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, j: int) -> str | None:
        """Line j as `numbered_lines` gives it: decoded, line end stripped, None if not UTF-8."""
        try:
            return self.raw[self.starts[j] : self.ends[j]].tobytes().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return None

    def matches(self, pattern: str) -> np.ndarray:
        """(n,) bool: the line, '\\n' included, matches `pattern` in full."""
        offsets = np.append(self.text_start, len(self.text))
        lines = _string_array(self.text, offsets)
        return pc.match_substring_regex(lines, pattern).to_numpy(zero_copy_only=False)


def _blocks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """Whole lines, about chunk_bytes at a time."""
    with open(path, "rb") as f:
        while buf := f.read(chunk_bytes):
            if not buf.endswith(b"\n"):
                buf += f.readline()  # to the end of the line (or of the file)
            yield buf


def _lines(buf: bytes) -> _Chunk:
    raw = np.frombuffer(buf, np.uint8)
    ends = np.flatnonzero(raw == 10)
    if not buf.endswith(b"\n"):  # the file's last line, without '\n'
        ends = np.append(ends, len(raw))
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    suspect = np.zeros(len(ends), bool)
    if buf.isascii() and b"\r" not in buf and buf.endswith(b"\n"):
        return _Chunk(raw, starts, ends, raw, starts, ends, suspect)  # the usual chunk: no copy
    # Otherwise a copy without trailing '\r's (rstrip("\r\n")) or non-ASCII lines.
    keep = np.ones(len(raw), bool)
    text_end = ends.copy()
    while True:
        cr = np.flatnonzero(text_end > starts)
        cr = cr[raw[text_end[cr] - 1] == 13]
        if not len(cr):
            break
        text_end[cr] -= 1
        keep[text_end[cr]] = False
    for j in np.unique(np.searchsorted(ends, np.flatnonzero(raw >= 0x80))).tolist():
        suspect[j] = True
        keep[starts[j] : text_end[j]] = False
        text_end[j] = starts[j]
    text = raw[keep] if buf.endswith(b"\n") else np.append(raw[keep], np.uint8(10))
    size = text_end - starts
    text_start = np.zeros(len(ends), np.int64)
    np.cumsum(size[:-1] + 1, out=text_start[1:])
    return _Chunk(raw, starts, ends, text, text_start, text_start + size, suspect)


# ---- token columns ----------------------------------------------------------------------------
def _string_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Strings data[offsets[i] : offsets[i + 1]], over data's own memory (ASCII: no check)."""
    return pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)), pa.py_buffer(data)
    )


def _strings(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """Strings data[start[i] : end[i]] for ascending, disjoint ranges, copied together."""
    size = end - start
    gap = start - np.append(0, end[:-1])
    mask = np.repeat(np.tile([False, True], len(start)), np.ravel([gap, size], order="F"))
    return _string_array(data[: len(mask)][mask], np.append(0, np.cumsum(size)))


def _integers(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """int64 numbers written at data[start[i] : end[i]] (a grammar above has checked them)."""
    return pc.cast(_strings(data, start, end), "int64").to_numpy()


@dataclasses.dataclass
class _Features:
    """The features of a chunk's candidate lines, one entry per feature of a known field."""

    line: np.ndarray  # (T,) int64 index of its line among the candidates
    code: np.ndarray  # (T,) int64 field index in the side's contract order
    ids: np.ndarray  # (T,) int64
    vals: np.ndarray  # (T,) float32
    count: np.ndarray  # (lines,) features per line, unknown fields included
    unknown: np.ndarray  # candidate index of each distinct (line, unknown field)
    overflow: np.ndarray  # candidate indices of lines with a value beyond float32


def _features(
    contract: FeatureContract, side: Side, text: np.ndarray, begin: np.ndarray, end: np.ndarray
) -> _Features:
    """The features of canonical feature lists text[begin[i] : end[i]] (ascending, each after a
    ',')."""
    names = {f.name: k for k, f in enumerate(contract.side_fields(side))}
    count = np.zeros(len(begin), np.int64)
    lines = np.flatnonzero(end > begin)
    if not len(lines):
        none = np.empty(0, np.int64)
        return _Features(none, none, none, np.empty(0, np.float32), count, none, none)
    b, e = begin[lines], end[lines]
    # One stream of the lists, each closed by a 0x01 where its line ended and the first opened
    # by a 0x01 where its ',' was: `01 field 02 id 03 value 01 field ...`. Canonical features
    # bring three separators each: field i lies after separator 3i, its id after 3i + 1, its
    # value after 3i + 2.
    span = e - b + 1
    gap = b - np.append(0, e[:-1] + 1)
    gap[0], span[0] = gap[0] - 1, span[0] + 1
    mask = np.repeat(np.tile([False, True], len(lines)), np.ravel([gap, span], order="F"))
    stream = text[: len(mask)][mask]  # boolean indexing: 3x np.compress's speed
    closing = np.cumsum(span) - 1
    stream[0], stream[closing] = 1, 1
    seps = np.flatnonzero(stream < 4)  # the separators: no other byte below 4 is canonical
    if (len(seps) - 1) % 3 or (stream[seps[3::3]] != 1).any():
        raise RuntimeError("a feature list broke the canonical grammar (a bug in this reader)")
    count[lines] = np.diff(np.searchsorted(seps, closing), prepend=0) // 3
    line = np.repeat(np.arange(len(begin)), count)
    # Token i, with the separator before it, is stream[seps[i] : seps[i + 1]]: one string array
    # over the stream, no copy. Before a number that separator becomes a leading '0' (a '-0' for
    # a negative value), which leaves every number's value as it was and makes it castable.
    value_sep = seps[2::3]
    minus = value_sep[stream[value_sep + 1] == ord("-")]
    stream[seps[1::3]], stream[value_sep] = ord("0"), ord("0")
    stream[minus], stream[minus + 1] = ord("-"), ord("0")
    tokens = _string_array(stream, seps)
    token = np.arange(0, len(seps) - 1, 3)
    field = pc.dictionary_encode(tokens.take(pa.array(token)))  # '\x01' + name
    lookup = [names.get(n[1:], -1) for n in field.dictionary.to_pylist()]
    field_index = field.indices.to_numpy()
    code = np.array(lookup, np.int64)[field_index]
    ids = pc.cast(tokens.take(pa.array(token + 1)), "int64").to_numpy()
    vals = pc.cast(tokens.take(pa.array(token + 2)), "float64").to_numpy()
    known = code >= 0
    unknown = np.empty(0, np.int64)
    if not known.all():  # a field counts once per line, however often it appears
        pair = line[~known] * len(lookup) + field_index[~known]
        unknown = np.unique(pair) // len(lookup)
    return _Features(
        line[known],
        code[known],
        ids[known],
        vals[known].astype(np.float32),
        count,
        unknown,
        np.unique(line[~(np.abs(vals) <= FLOAT32_LIMIT)]),  # inf or nan too
    )


def _block(
    contract: FeatureContract, side: Side, f: _Features, rows: np.ndarray, at: np.ndarray, n: int
):
    """(n, width) raw ids and values of a side, with the features of the candidate lines where
    `rows` is True placed in rows `at`: ids of a field in order of appearance, the `max_len`
    highest values of a longer list (ties: first seen)."""
    fields = contract.side_fields(side)
    width = contract.width(side)
    ids = np.full((n, width), -1, np.int64)
    vals = np.zeros((n, width), np.float32)
    take = rows[f.line]
    line, code, fid, fval = f.line, f.code, f.ids, f.vals
    if not take.all():
        line, code, fid, fval = line[take], code[take], fid[take], fval[take]
    if not len(line):
        return ids, vals
    # A field's first cell in the block's flat layout: one key per (line, field); the rank of a
    # feature among its key's is its column within the field.
    start = np.cumsum([0] + [x.max_len for x in fields])[:-1]
    cell = at[line] * width + start[code]
    max_len = np.array([x.max_len for x in fields], np.int64)[code]
    run = np.flatnonzero(np.diff(cell, prepend=-1))
    if np.bincount(cell[run], minlength=ids.size).max() > 1:
        # A field's features apart within a line: bring them together, in file order.
        order = np.argsort(cell, kind="stable")
        cell, max_len, fid, fval = cell[order], max_len[order], fid[order], fval[order]
    k, size = _rank_in_run(cell)
    over = size > max_len
    if over.any():
        # Keep the max_len highest values of each long list: rank by (value desc, position).
        t = np.flatnonzero(over)
        by_value = t[np.lexsort((t, -fval[t], cell[t]))]
        r, _ = _rank_in_run(cell[by_value])
        keep = np.ones(len(cell), bool)
        keep[by_value[r >= max_len[by_value]]] = False
        cell, fid, fval = cell[keep], fid[keep], fval[keep]
        k, _ = _rank_in_run(cell)
    ids.ravel()[cell + k] = fid
    vals.ravel()[cell + k] = fval
    return ids, vals


def _rank_in_run(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's index within its run of equal keys, and the run's size."""
    new = np.diff(key, prepend=key[0] - 1) != 0
    first = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    size = np.diff(first, append=len(key))
    return np.arange(len(key)) - first[run], size[run]


# ---- writing blocks of rows -------------------------------------------------------------------
class _BlockWriter(SplitWriter):
    """SplitWriter's arrays and files, written a block of rows at a time. On disk a block goes to
    its file with pwrite, under the mapping (one page cache: the arrays see it): a quarter of the
    CPU of writing through the mapping (measured: 0.9 s against 3-4.5 s a GiB), and no output
    page counts in the reader's RSS. Files start unfilled, each row is written once, and the rows
    past the end get SplitWriter's fill at `finish`."""

    def __init__(self, contract, max_users, max_rows, out_dir=None):
        self._fills: dict[str, object] = {}
        self._fds: dict[str, int] = {}
        super().__init__(contract, max_users, max_rows, out_dir)

    def _alloc(self, name: str, shape: tuple, dtype, fill) -> np.ndarray:
        if self.out_dir is None:
            return super()._alloc(name, shape, dtype, fill)
        path = self.out_dir / f"{name}.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self._fills[name], self._fds[name] = fill, os.open(path, os.O_WRONLY)
        return arr

    def put(self, start: int, rows: np.ndarray, **columns: np.ndarray) -> int:
        """Write the `rows` (a mask) of each column's block from row `start` on; how many."""
        every = rows.all()  # the usual chunk: no copy to leave rows out
        for name, block in columns.items():
            arr = self.arrays[name]
            block = block if every else block[rows]
            if name not in self._fds:
                arr[start : start + len(block)] = block
                continue
            data = memoryview(np.ascontiguousarray(block, arr.dtype)).cast("B")
            at = arr.offset + start * arr.strides[0]
            while data:
                done = os.pwrite(self._fds[name], data, at)
                data, at = data[done:], at + done
        return int(rows.sum())

    def add_users(self, rows: np.ndarray, ids: np.ndarray, vals: np.ndarray) -> None:
        self.n_users += self.put(self.n_users, rows, user_ids=ids, user_vals=vals)

    def add_rows(self, rows: np.ndarray, **columns: np.ndarray) -> None:
        self.n_rows += self.put(self.n_rows, rows, **columns)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def finish(self, report: ReadReport) -> EncodedSplit:
        self.close()
        for name, fill in self._fills.items():
            if fill:
                arr = self.arrays[name]
                arr[self.n_users if name.startswith("user") else self.n_rows :] = fill
        return super().finish(report)


# ---- the two files ----------------------------------------------------------------------------
def read_columnar(
    data_dir: Path,
    split: str,
    contract: FeatureContract,
    out_dir: Path | None = None,
    orphans: OrphanPolicy = "drop",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    workers: int = 2,
) -> EncodedSplit:
    """`read_aliccp`, read in columns: the same arrays (on disk: the same files) and report.
    `workers` chunks are parsed at once (Arrow and numpy release the GIL); each is then checked
    and written in file order."""
    common = Path(data_dir) / f"common_features_{split}.csv"
    skeleton = Path(data_dir) / f"sample_skeleton_{split}.csv"
    for p in (common, skeleton):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing (expected the raw Ali-CCP layout)")
    report = ReadReport()
    n_common, n_skeleton = count_lines(common), count_lines(skeleton)
    writer = _BlockWriter(contract, n_common, n_skeleton, out_dir)
    users: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(workers) as pool:
            progress = read_progress(common.name, n_common)
            parse = functools.partial(_parse_common, contract)
            for part in _in_order(pool, parse, _blocks(common, chunk_bytes), workers):
                _write_common(part, contract, users, writer, report, common.name)
                progress.update(part.chunk.first + len(part.chunk) - 1)
            progress.finish()
            # Users are all known now; the skeleton's parsers only read them.
            progress = read_progress(skeleton.name, n_skeleton)
            parse = functools.partial(_parse_skeleton, contract, users, orphans)
            for part in _in_order(pool, parse, _blocks(skeleton, chunk_bytes), workers):
                _write_skeleton(part, contract, users, writer, report, orphans, skeleton, common)
                progress.update(part.chunk.first + len(part.chunk) - 1)
            progress.finish()
    except BaseException:
        writer.close()
        raise
    report.lines = n_common + n_skeleton
    return writer.finish(report)


def _in_order(
    pool: ThreadPoolExecutor, parse: Callable, blocks: Iterator[bytes], ahead: int
) -> Iterator:
    """parse(block) for each block, up to `ahead` at once, yielded in order with the number of
    the chunk's first line set."""
    pending: deque = deque()
    first = 1

    def done():
        nonlocal first
        part = pending.popleft().result()
        part.chunk.first, first = first, first + len(part.chunk)
        return part

    for block in blocks:
        pending.append(pool.submit(parse, block))
        if len(pending) > ahead:
            yield done()
    while pending:
        yield done()


def _columns(chunk: _Chunk, pattern: str, n_commas: int) -> tuple[np.ndarray, np.ndarray]:
    """The candidate lines (ASCII, canonical), and their first n_commas comma positions."""
    lines = np.flatnonzero(chunk.matches(pattern) & ~chunk.suspect)
    commas = np.flatnonzero(chunk.text == _COMMA)
    first = np.searchsorted(commas, chunk.text_start[lines])
    return lines, commas[first[:, None] + np.arange(n_commas)]


@dataclasses.dataclass
class _Common:
    """A chunk of common_features lines, parsed in columns; `fast` lines are good but for a
    repeated common_feature_index, which only file order can tell."""

    chunk: _Chunk
    fast: np.ndarray  # (n,) bool
    cfi: dict[int, str]  # common_feature_index of each fast line
    unknown: np.ndarray  # (n,) unknown fields per fast line
    ids: np.ndarray  # (n, user width) the fast lines' raw ids, -1 padding
    vals: np.ndarray  # (n, user width)


def _parse_common(contract: FeatureContract, buf: bytes) -> _Common:
    chunk = _lines(buf)
    lines, c = _columns(chunk, _COMMON_LINE, 2)
    text = chunk.text
    num = _integers(text, c[:, 0] + 1, c[:, 1])
    f = _features(contract, "user", text, c[:, 1] + 1, chunk.text_end[lines])
    ok = num == f.count
    ok[f.overflow] = False
    fast = np.zeros(len(chunk), bool)
    fast[lines[ok]] = True
    ids, vals = _block(contract, "user", f, ok, lines, len(chunk))
    cfi = _strings(text, chunk.text_start[lines], c[:, 0]).to_pylist()
    unknown = np.bincount(lines[f.unknown], minlength=len(chunk))
    return _Common(chunk, fast, dict(zip(lines.tolist(), cfi, strict=True)), unknown, ids, vals)


def _write_common(
    part: _Common,
    contract: FeatureContract,
    users: dict[str, int],
    writer: _BlockWriter,
    report: ReadReport,
    name: str,
) -> None:
    """Check each line in file order (the body of read_aliccp's common loop, check for check;
    a fast line skips the parse it has passed) and write the users it adds."""
    chunk, ids, vals = part.chunk, part.ids, part.vals
    kept = []
    for j in range(len(chunk)):
        try:
            feats = None
            if part.fast[j]:
                cfi = part.cfi[j]
            else:
                cfi, feats = parse_common_line(chunk.line(j))
            if cfi in users:
                raise MalformedLine(f"common_feature_index {cfi} appears twice")
            if feats is None:
                report.unknown_fields += int(part.unknown[j])
            else:
                feats = split_features(contract, "user", feats, report)
                ids[j], vals[j] = contract.encode_entity("user", feats)
        except (MalformedLine, ValueError) as e:
            report.bad_line(name, chunk.first + j, str(e))
            continue
        users[cfi] = writer.n_users + len(kept)
        kept.append(j)
    rows = np.zeros(len(chunk), bool)
    rows[kept] = True
    writer.add_users(rows, ids, vals)


@dataclasses.dataclass
class _Skeleton:
    """A chunk of sample_skeleton lines, parsed in columns: the fast lines' rows are final."""

    chunk: _Chunk
    fast: np.ndarray  # (n,) bool
    kept: np.ndarray  # (n,) bool: a fast line that is a row (not a dropped orphan)
    sample_id: np.ndarray  # (n,) int64
    click: np.ndarray  # (n,) uint8, after the orphan policy
    conv: np.ndarray  # (n,) uint8
    row_user: np.ndarray  # (n,) int64
    ids: np.ndarray  # (n, item width)
    vals: np.ndarray  # (n, item width)
    orphans: int  # orphan conversions among the fast lines
    unknown: int  # unknown fields of the fast lines


def _parse_skeleton(
    contract: FeatureContract, users: dict[str, int], orphans: OrphanPolicy, buf: bytes
) -> _Skeleton:
    chunk = _lines(buf)
    n = len(chunk)
    lines, c = _columns(chunk, _SKELETON_LINE, 5)
    text = chunk.text
    user = _lookup(_strings(text, c[:, 2] + 1, c[:, 3]), users)
    num = _integers(text, c[:, 3] + 1, c[:, 4])
    f = _features(contract, "item", text, c[:, 4] + 1, chunk.text_end[lines])
    ok = (num == f.count) & (user >= 0)
    ok[f.overflow] = False
    fast = np.zeros(n, bool)
    fast[lines[ok]] = True
    click = np.zeros(n, np.uint8)
    conv = np.zeros(n, np.uint8)
    click[lines], conv[lines] = text[c[:, 0] + 1] == _ONE, text[c[:, 1] + 1] == _ONE
    orphan = fast & (conv == 1) & (click == 0)
    kept = fast & ~orphan if orphans == "drop" else fast.copy()
    click[orphan] = conv[orphan] = 1 if orphans == "click" else 0
    ids, vals = _block(contract, "item", f, kept[lines], lines, n)
    sample_id = np.zeros(n, np.int64)
    row_user = np.zeros(n, np.int64)
    sample_id[lines] = _integers(text, chunk.text_start[lines], c[:, 0])
    row_user[lines] = user
    return _Skeleton(
        chunk,
        fast,
        kept,
        sample_id,
        click,
        conv,
        row_user,
        ids,
        vals,
        int(orphan.sum()),
        int(ok[f.unknown].sum()),
    )


def _write_skeleton(
    part: _Skeleton,
    contract: FeatureContract,
    users: dict[str, int],
    writer: _BlockWriter,
    report: ReadReport,
    orphans: OrphanPolicy,
    skeleton: Path,
    common: Path,
) -> None:
    """Count the fast lines, judge every other line with read_aliccp's own
    `parse_skeleton_line` (in file order), and write the chunk's rows."""
    chunk, kept = part.chunk, part.kept
    report.orphan_conversions += part.orphans
    report.dropped_orphans += part.orphans if orphans == "drop" else 0
    report.unknown_fields += part.unknown
    for j in np.flatnonzero(~part.fast).tolist():
        try:
            sid, labels, user, parsed = parse_skeleton_line(
                chunk.line(j), contract, users, orphans, report, common.name
            )
            if labels is not None:
                part.sample_id[j] = int64(sid, "sample_id")
                part.ids[j], part.vals[j] = contract.encode_entity("item", parsed)
                part.click[j], part.conv[j] = labels
                part.row_user[j] = user
                kept[j] = True
        except (MalformedLine, ValueError) as e:
            report.bad_line(skeleton.name, chunk.first + j, str(e))
    writer.add_rows(
        kept,
        item_ids=part.ids,
        item_vals=part.vals,
        row_user=part.row_user,
        click=part.click,
        conv=part.conv,
        sample_id=part.sample_id,
    )


def _lookup(cfi: pa.Array, users: dict[str, int]) -> np.ndarray:
    """User row of each common_feature_index (-1: unknown). The skeleton is grouped by it, so one
    dict lookup per run of equal keys."""
    if not len(cfi):
        return np.empty(0, np.int64)
    head = np.ones(len(cfi), bool)
    head[1:] = pc.not_equal(cfi[1:], cfi[:-1]).to_numpy(zero_copy_only=False)
    heads = np.flatnonzero(head)
    rows = [users.get(k, -1) for k in cfi.take(pa.array(heads)).to_pylist()]
    return np.repeat(np.array(rows, np.int64), np.diff(heads, append=len(cfi)))
