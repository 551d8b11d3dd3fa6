"""The impression log: what each sampled `/rank` answer served, written to Parquet off the
request path (RANKER_LOG_DIR, RANKER_LOG_SAMPLE; off by default).

One row per returned item: the request's id and time, the model version and its content digest,
the user's arm, the fusion it was ranked by, the user, and the item's id, position, pCTR, pCVR,
pCTCVR, score and price, as the answer gave them, the request's context features by name as
sent (one JSON object a request, `context_features`), the arms' shadow scores where the answer
was scored again, and the features as served by the spec's names (`Layout`: the user's on each
answer's first row, the item's on every row; docs/loop.md).

The request path only draws for the sample (`sampled`) and `put`s a record on a bounded queue,
never a wait. When the queue is full the record is dropped and counted (`on_drop`), and so is a
record the writer could not write: a request never waits for the log and never fails because of
it. A writer thread takes what is queued every BUILD_S, and writes what it took as a row group of
the current file every WRITE_S. A file is written under a hidden name (`.NAME.partial`) and
renamed to `NAME` (`impressions-<UTC start>-<pid>-<seq>.parquet`) once closed: when it reaches
`rotate_bytes` or `rotate_s` of age, or on `close` (the service's shutdown, SIGTERM included).
A reader that lists `*.parquet` only ever sees complete files. A writer killed outright
(SIGKILL, a crash) leaves its last file hidden and unreadable; it is never renamed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from service.response import Served

log = logging.getLogger("service.impressions")
BUILD_S = 0.1  # what is queued is made into a table this often
WRITE_S = 1.0  # and the tables made are written as one row group this often
SOURCES = ("context", "event")  # an item-side feature of these is logged under its source


class ImpressionLog:
    def __init__(
        self,
        folder: Path,
        sample: float = 1.0,
        max_queue: int = 10_000,
        rotate_bytes: int = 64 << 20,
        rotate_s: float = 300.0,
        on_drop: Callable[[str, int], None] = lambda reason, n: None,
        on_written: Callable[[int], None] = lambda rows: None,
        draw: Callable[[], float] = random.random,
    ):
        self.folder, self.sample = Path(folder), sample
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.on_drop, self.on_written, self.draw = on_drop, on_written, draw
        import pyarrow.parquet  # noqa: F401  (at start: a service without it stops here)

        self.folder.mkdir(parents=True, exist_ok=True)
        probe = self.folder / f".probe-{os.getpid()}"  # refused at start, not at the first write
        probe.write_bytes(b"")
        probe.unlink()
        self.queue: queue.Queue = queue.Queue(max_queue)
        self._stop = threading.Event()
        self._writer = None  # pyarrow's ParquetWriter of the open file
        self._path: Path | None = None
        self._opened = 0.0
        self._schema = None
        self._seq = 0
        self.thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self.thread.start()

    # ---- the request path -------------------------------------------------------------------
    def sampled(self) -> bool:
        """One draw: whether an answer is to be logged (with probability `sample`)."""
        return self.sample >= 1.0 or self.draw() < self.sample

    def put(self, served: Served) -> None:
        """Queue an answer drawn for the log; never blocks, never raises."""
        try:
            self.queue.put_nowait(served)
        except queue.Full:
            self.on_drop("queue_full", 1)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close the open file under its final name, stop the thread."""
        self._stop.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.error("the impression log did not close within %.0f s", timeout_s)

    # ---- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        """Every BUILD_S, take all that is queued at once and build its table; every WRITE_S
        write the tables built as one row group. The thread wakes a few times a second, not
        once an answer, and its Python work (the tables) comes in small pieces: while it holds
        the GIL the event loop waits (measured: docs/loop.md). Writing releases the GIL."""
        pending: list[tuple] = []  # (table, answers in it)
        last = time.monotonic()
        while True:
            stop = self._stop.wait(BUILD_S)
            records = []
            with contextlib.suppress(queue.Empty):
                while True:
                    records.append(self.queue.get_nowait())
            for _, group in itertools.groupby(records, key=_kinds):
                built = self._build(list(group))
                if built is None:
                    continue
                if pending and not built[0].schema.equals(pending[0][0].schema, True):
                    self._write(pending)  # ids of another type: _write starts a new file
                    pending = []
                pending.append(built)
            if pending and (stop or time.monotonic() - last >= WRITE_S):
                self._write(pending)
                pending, last = [], time.monotonic()
            if self._writer is not None and (
                stop
                or self._path.stat().st_size >= self.rotate_bytes
                or time.time() - self._opened >= self.rotate_s
            ):
                self._finish()
            if stop:
                return

    def _build(self, records: list[Served]) -> tuple | None:
        try:
            return _table(records), len(records)
        except Exception:  # a defect in a record: it is lost, the open file is not
            self._lost(len(records))
            return None

    def _write(self, built: list[tuple]) -> None:
        import pyarrow as pa

        table = pa.concat_tables([t for t, _ in built])
        try:
            if self._writer is not None and not table.schema.equals(self._schema, True):
                self._finish()  # ids of another type (a model of another key): a new file
            if self._writer is None:
                self._open(table.schema)
            self._writer.write_table(table, row_group_size=table.num_rows)
            self.on_written(table.num_rows)
        except Exception:  # a full disk, a folder gone: the open file is lost too
            self._lost(sum(n for _, n in built))
            self._abandon()

    def _lost(self, answers: int) -> None:
        """Answers not written: logged with the trace and counted, never a request's failure."""
        log.exception("impression log: %d answers not written", answers)
        self.on_drop("write_error", answers)

    def _open(self, schema) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"impressions-{stamp}-{os.getpid()}-{self._seq:04d}.parquet"
        self._path = self.folder / f".{name}.partial"
        # dictionary pages for the per-request columns only: tried on the scores, they cost
        # the writer 2.7x its time for nothing (measured: docs/loop.md)
        text = [f.name for f in schema if pa.types.is_dictionary(f.type)]
        self._writer = pq.ParquetWriter(self._path, schema, compression="zstd", use_dictionary=text)
        self._schema, self._opened = schema, time.time()

    def _finish(self) -> None:
        """Close the open file and give it its final name."""
        writer, path = self._writer, self._path
        self._writer = self._path = None
        try:
            writer.close()
            path.rename(path.with_name(path.name[1 : -len(".partial")]))
        except Exception:
            log.exception("impression log: %s could not be closed", path)

    def _abandon(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file is lost either way
                self._writer.close()
            self._writer = self._path = None


def _kinds(r: Served) -> tuple:
    """The types of a record's ids and its features' layout: records of one batch with others
    (a reload to a model of another key type, or of other features) make a table of their
    own."""
    layout = None if r.encoder is None else layout_of(r.encoder).key
    return type(r.user_id), type(r.item_ids[0]) if r.item_ids else None, layout


class Layout:
    """How a model's features are logged: one column per feature by its spec name, prefixed
    by where it comes from (`user.`, `item.`, `context.`, `event.`), raw ids as the model's
    contract made them (an id: int64, null where missing; a list: list<int64> and its weights
    `.weights`, list<float32>; a number: float64). Crosses are not logged: they are counted from the
    user's lists and the item's ids, as training counts them. `metadata` (the file's
    `ranker.features`) says what each column is, with the model's spec: what `ranker join`
    writes its training tables' spec from."""

    def __init__(self, contract):
        kinds = {f["name"]: f.get("kind", "") for f in (contract.spec or {}).get("features", [])}
        self.entries = []  # (side, column, kind, columns slice)
        described = []
        for side in ("user", "item"):
            for f, c in contract.columns(side):
                if f.cross:
                    continue
                where = "user" if side == "user" else f.source if f.source in SOURCES else "item"
                kind = kinds.get(f.name) or (
                    "numeric" if f.numeric else "ids" if f.max_len > 1 else "id"
                )
                col = f"{where}.{f.name}"
                self.entries.append((side, col, kind, c))
                described.append(
                    {
                        "name": f.name,
                        "from": where,
                        "kind": kind,
                        "column": col,
                        **({"weights": f"{col}.weights"} if kind == "ids" else {}),
                        **({"values": f.dtype} if f.dtype else {}),
                    }
                )
        meta = {"spec": contract.spec, "keys": contract.keys, "features": described}
        self.key = msgspec.json.encode(meta, order="sorted")
        self.metadata = {b"ranker.features": self.key}


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> its Layout


def layout_of(encoder) -> Layout:
    """The encoder's model's Layout, made once per model version (and gone with it)."""
    layout = _LAYOUTS.get(encoder)
    if layout is None:
        layout = _LAYOUTS[encoder] = Layout(encoder.contract)
    return layout


def _columns(layout: Layout, side: str, ids: np.ndarray, vals: np.ndarray) -> dict:
    """One side's raw rows (rows, width) as the layout's columns."""
    import pyarrow as pa

    out = {}
    for s, col, kind, c in layout.entries:
        if s != side:
            continue
        if kind == "id":
            v = ids[:, c.start]
            out[col] = pa.array(v, pa.int64(), mask=v < 0)
        elif kind == "numeric":
            out[col] = pa.array(vals[:, c.start].astype(np.float64), mask=ids[:, c.start] < 0)
        else:  # present ids, in order: the rows are filled from their first column
            sub = ids[:, c]
            present = sub >= 0
            offsets = pa.array(np.concatenate([[0], np.cumsum(present.sum(axis=1))]), pa.int32())
            out[col] = pa.ListArray.from_arrays(offsets, pa.array(sub[present], pa.int64()))
            out[f"{col}.weights"] = pa.ListArray.from_arrays(
                offsets, pa.array(vals[:, c][present], pa.float32())
            )
    return out


def _user_rows(records: list[Served], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each answer's user raw row as served ((answers, width) ids and values), and which are
    known (a cache hit's record not read again: not logged, its row empty)."""
    ids = np.full((len(records), width), -1, np.int64)
    vals = np.zeros((len(records), width), np.float32)
    known = np.zeros(len(records), bool)
    for k, r in enumerate(records):
        raw = r.user_raw
        if raw is None and r.user_record is not None:
            try:
                raw = r.encoder.stored_user_raw(r.user_record, r.user_key)
            except Exception:  # (it served: it encodes) an unusable record stays out
                raw = None
        if raw is not None:
            ids[k], vals[k], known[k] = raw[0], raw[1], True
    return ids, vals, known


def _shadow(records: list[Served], per_request) -> dict:
    """The arms' shadow model's version and scores of each returned item, beside the served
    ones (null where the answer was not scored again)."""
    import pyarrow as pa

    def per_item(name: str, dtype) -> pa.Array:
        parts = [
            np.full(len(r.order), np.nan) if r.shadow is None else getattr(r.shadow, name)[r.order]
            for r in records
        ]
        return pa.array(np.concatenate(parts).astype(dtype), from_pandas=True)

    return {
        "shadow_model_version": per_request(
            lambda r: None if r.shadow is None else r.shadow.model_version, pa.string(), True
        ),
        "shadow_pctr": per_item("pctr", np.float32),
        "shadow_pcvr": per_item("pcvr", np.float32),
        "shadow_pctcvr": per_item("pctcvr", np.float32),
        "shadow_score": per_item("score", np.float64),
    }


def _features(records: list[Served], of_request) -> dict:
    """The features as served, by name: the user's once per answer, on its first row (position
    0; null on the others: a user's lists on each of 500 rows cost the writer more than the
    rest of the answer, measured in docs/loop.md), the returned items' on every row."""
    if records[0].encoder is None:
        return {}
    import pyarrow as pa

    encoder = records[0].encoder
    layout = layout_of(encoder)
    contract = encoder.contract
    u_ids, u_vals, known = _user_rows(records, contract.width("user"))
    # each answer's first row takes its user's values; the others take the null past them
    counts = np.array([len(r.order) for r in records], dtype=np.int64)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    at = np.full(int(counts.sum()), len(records), dtype=np.int64)
    at[firsts[counts > 0]] = np.flatnonzero(counts > 0)
    at = pa.array(at)
    user = {
        k: pa.concat_arrays([v, pa.nulls(1, v.type)]).take(at)
        for k, v in _columns(layout, "user", u_ids, u_vals).items()
    }
    parts = []  # (answers of one model version at a time: its encoder, its item table)
    for _, group in itertools.groupby(records, key=lambda r: id(r.encoder)):
        same = list(group)
        parts.append(same[0].encoder.raw_items([(r.items_raw, r.order) for r in same]))
    i_ids = np.concatenate([p[0] for p in parts])
    i_vals = np.concatenate([p[1] for p in parts])
    return {
        "user_logged": pa.array(known).take(of_request),  # (on every row: what the join keeps)
        **user,
        **_columns(layout, "item", i_ids, i_vals),
    }


def _table(records: list[Served]):
    """The records' returned items as one table, a row per item. Built by column, each
    request's values taken by index in C (pyarrow's `take`), never a Python loop over rows:
    the writer shares the GIL with the event loop."""
    import pyarrow as pa

    counts = np.array([len(r.order) for r in records], dtype=np.int64)
    of_request = pa.array(np.repeat(np.arange(len(records), dtype=np.int32), counts))

    def per_request(get: Callable[[Served], object], type_=None, nulls: bool = False):
        """A request's value on each of its rows: text that is never null dictionary-encoded
        (the same type in every batch, so one file's schema), anything else taken."""
        values = pa.array([get(r) for r in records], type_)
        if pa.types.is_string(values.type) and not nulls:
            return pa.DictionaryArray.from_arrays(of_request, values)
        return values.take(of_request)

    def per_item(name: str, dtype) -> np.ndarray:
        return np.concatenate([getattr(r, name)[r.order] for r in records]).astype(dtype)

    def context(r: Served) -> str | None:  # as served, by name: one JSON object a request
        return None if r.context is None else msgspec.json.encode(r.context).decode()

    price = np.concatenate(
        [np.full(len(r.order), np.nan) if r.price is None else r.price[r.order] for r in records]
    )
    times = np.round(np.array([r.time_s for r in records]) * 1e6).astype(np.int64)
    text = pa.string()
    table = pa.table(
        {
            "request_id": per_request(lambda r: r.request_id, text),
            "time": pa.array(times, pa.timestamp("us", tz="UTC")).take(of_request),
            "model_version": per_request(lambda r: r.model_version, text),
            "model_digest": per_request(lambda r: r.model_digest, text),
            "arm": per_request(lambda r: r.arm, text, nulls=True),
            "policy": per_request(lambda r: r.fusion.policy, text),
            "a": per_request(lambda r: r.fusion.a, pa.float64()),
            "b": per_request(lambda r: r.fusion.b, pa.float64()),
            "c": per_request(lambda r: r.fusion.c, pa.float64()),
            "user_id": per_request(lambda r: r.user_id),
            "user": per_request(lambda r: r.user, text),
            "user_cache": per_request(lambda r: r.user_cache, text),
            "position": pa.array(np.concatenate([np.arange(n) for n in counts]), pa.int32()),
            "item_id": pa.array(np.concatenate([np.asarray(r.item_ids)[r.order] for r in records])),
            "pctr": pa.array(per_item("pctr", np.float32)),
            "pcvr": pa.array(per_item("pcvr", np.float32)),
            "pctcvr": pa.array(per_item("pctcvr", np.float32)),
            "score": pa.array(per_item("score", np.float64)),
            "price": pa.array(price, pa.float64(), from_pandas=True),  # NaN -> null
            "context_features": per_request(context, text, nulls=True),
            **_shadow(records, per_request),
            **_features(records, of_request),
        }
    )
    if records[0].encoder is not None:
        table = table.replace_schema_metadata(layout_of(records[0].encoder).metadata)
    return table
