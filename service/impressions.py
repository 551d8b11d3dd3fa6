"""The impression log: what each sampled `/rank` answer served, written to Parquet off the
request path (RANKER_LOG_DIR, RANKER_LOG_SAMPLE; off by default).

One row per returned item: the request's id and time, the model version and its content digest,
the fusion it was ranked by, the user, and the item's id, position, pCTR, pCVR, pCTCVR, score and
price, as the answer gave them (docs/loop.md). The features as served are not logged yet.

The request path only `offer`s a record: a sampling draw and a put on a bounded queue, never a
wait. When the queue is full the record is dropped and counted (`on_drop`), and so is a record
the writer could not write: a request never waits for the log and never fails because of it.
A writer thread turns records into row groups (at most every FLUSH_S, or FLUSH_ROWS rows) of the
current file. A file is written under a hidden name (`.NAME.partial`) and renamed to `NAME`
(`impressions-<UTC start>-<pid>-<seq>.parquet`) once closed, when it reaches `rotate_bytes` or
`rotate_s` of age, or on `close` (the service's shutdown, SIGTERM included): a reader that lists
`*.parquet` only ever sees complete files. A writer killed outright (SIGKILL, a crash) leaves its
last file hidden and unreadable; it is never renamed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("service.impressions")
FLUSH_S = 1.0  # a row group at least this often while records arrive
FLUSH_ROWS = 50_000  # or once this many item rows wait
_STOP = object()


@dataclass(frozen=True)
class Served:
    """One answer as the service gave it: the items in their answered order (`order` indexes
    the request's candidates)."""

    request_id: str
    time_s: float  # UNIX time of the answer
    model_version: str
    model_digest: str
    policy: str
    a: float
    b: float
    c: float
    user_id: int | str
    user: str  # where its features came from: request, store or unknown
    user_cache: str  # hit or miss
    item_ids: list  # the request's candidates' ids, in its order
    order: np.ndarray  # (returned,) positions into item_ids, best first
    pctr: np.ndarray  # (candidates,)
    pcvr: np.ndarray
    pctcvr: np.ndarray
    score: np.ndarray  # (candidates,) the fusion score
    price: np.ndarray | None  # (candidates,) NaN where none; None: no price at all


class ImpressionLog:
    def __init__(
        self,
        folder: Path,
        sample: float = 1.0,
        max_queue: int = 10_000,
        rotate_bytes: int = 64 << 20,
        rotate_s: float = 300.0,
        on_drop: Callable[[str], None] = lambda reason: None,
        on_written: Callable[[int], None] = lambda rows: None,
        draw: Callable[[], float] = random.random,
    ):
        self.folder, self.sample = Path(folder), sample
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.on_drop, self.on_written, self.draw = on_drop, on_written, draw
        self.folder.mkdir(parents=True, exist_ok=True)
        probe = self.folder / f".probe-{os.getpid()}"  # refused at start, not at the first write
        probe.write_bytes(b"")
        probe.unlink()
        self.queue: queue.Queue = queue.Queue(max_queue)
        self._writer = None  # pyarrow's ParquetWriter of the open file
        self._path: Path | None = None
        self._opened = 0.0
        self._schema = None
        self._seq = 0
        self.thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self.thread.start()

    # ---- the request path -------------------------------------------------------------------
    def offer(self, served: Served) -> None:
        """Log `served` with probability `sample`; never blocks, never raises."""
        if self.sample < 1.0 and self.draw() >= self.sample:
            return
        try:
            self.queue.put_nowait(served)
        except queue.Full:
            self.on_drop("queue_full")

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close the open file under its final name, stop the thread."""
        self.queue.put(_STOP)  # blocks only while the queue is full: the writer is draining it
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.error("the impression log did not close within %.0f s", timeout_s)

    # ---- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[Served] = []
        rows, last = 0, time.monotonic()
        while True:
            try:
                item = self.queue.get(timeout=FLUSH_S)
            except queue.Empty:
                item = None
            stop = item is _STOP
            if item is not None and not stop:
                pending.append(item)
                rows += len(item.order)
            now = time.monotonic()
            if pending and (stop or rows >= FLUSH_ROWS or now - last >= FLUSH_S):
                self._write(pending)
                pending, rows, last = [], 0, now
            if self._writer is not None and (
                stop
                or self._path.stat().st_size >= self.rotate_bytes
                or time.time() - self._opened >= self.rotate_s
            ):
                self._finish()
            if stop:
                return

    def _write(self, records: list[Served]) -> None:
        try:
            table = _table(records)
            if self._writer is not None and table.schema != self._schema:
                self._finish()  # ids of another type (a model of another key): a new file
            if self._writer is None:
                self._open(table.schema)
            self._writer.write_table(table)
            self.on_written(table.num_rows)
        except Exception:  # a full disk, a folder gone: the records are lost, never a request
            log.exception("impression log: %d records not written", len(records))
            for _ in records:
                self.on_drop("write_error")
            self._abandon()

    def _open(self, schema) -> None:
        import pyarrow.parquet as pq

        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"impressions-{stamp}-{os.getpid()}-{self._seq:04d}.parquet"
        self._path = self.folder / f".{name}.partial"
        self._writer = pq.ParquetWriter(self._path, schema, compression="zstd")
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


def _table(records: list[Served]):
    """The records' returned items as one table, a row per item."""
    import pyarrow as pa

    counts = np.array([len(r.order) for r in records], dtype=np.int64)

    def per_request(values, type_=None):
        return pa.array(np.repeat(np.asarray(values, dtype=object), counts).tolist(), type_)

    def per_item(name: str, dtype) -> np.ndarray:
        return np.concatenate([getattr(r, name)[r.order] for r in records]).astype(dtype)

    price = np.concatenate(
        [np.full(len(r.order), np.nan) if r.price is None else r.price[r.order] for r in records]
    )
    item_ids = [r.item_ids[i] for r in records for i in r.order.tolist()]
    return pa.table(
        {
            "request_id": per_request([r.request_id for r in records], pa.string()),
            "time": pa.array(
                np.round(np.repeat([r.time_s for r in records], counts) * 1e6).astype(np.int64),
                pa.timestamp("us", tz="UTC"),
            ),
            "model_version": per_request([r.model_version for r in records], pa.string()),
            "model_digest": per_request([r.model_digest for r in records], pa.string()),
            "policy": per_request([r.policy for r in records], pa.string()),
            "a": pa.array(np.repeat([r.a for r in records], counts), pa.float64()),
            "b": pa.array(np.repeat([r.b for r in records], counts), pa.float64()),
            "c": pa.array(np.repeat([r.c for r in records], counts), pa.float64()),
            "user_id": per_request([r.user_id for r in records]),
            "user": per_request([r.user for r in records], pa.string()),
            "user_cache": per_request([r.user_cache for r in records], pa.string()),
            "position": pa.array(np.concatenate([np.arange(n) for n in counts]), pa.int32()),
            "item_id": pa.array(item_ids),
            "pctr": pa.array(per_item("pctr", np.float32)),
            "pcvr": pa.array(per_item("pcvr", np.float32)),
            "pctcvr": pa.array(per_item("pctcvr", np.float32)),
            "score": pa.array(per_item("score", np.float64)),
            "price": pa.array(price, pa.float64(), from_pandas=True),  # NaN -> null
        }
    )
