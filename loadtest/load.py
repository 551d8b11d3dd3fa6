"""The load driver: sends /rank requests over keep-alive connections, closed loop or open loop
(Poisson arrivals), and counts every answer by status, error type, model version and cache
outcome, with an optional check of each answer's content."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson


@dataclass
class LoadResult:
    statuses: Counter = field(default_factory=Counter)  # status code, or "conn-error"
    types: Counter = field(default_factory=Counter)  # error type of non-200 answers
    versions: Counter = field(default_factory=Counter)  # model_version of 200 answers
    user_cache: Counter = field(default_factory=Counter)  # "hit" or "miss" of 200 answers
    accepted_s: list[float] = field(default_factory=list)  # latency of 200 answers
    accepted_at: list[float] = field(default_factory=list)  # their start (time.perf_counter)
    refused_s: list[float] = field(default_factory=list)  # latency of 503 answers
    problems: list[str] = field(default_factory=list)  # what `check` found wrong
    missing_request_id: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        """Anything but a 200: errors, refusals, timeouts, dropped connections."""
        return self.total - self.statuses.get(200, 0)

    def pct(self, q: float, refused: bool = False) -> float | None:
        xs = self.refused_s if refused else self.accepted_s
        return float(np.percentile(xs, q) * 1e3) if xs else None

    def summary(self) -> dict:
        return {
            "requests": self.total,
            "seconds": round(self.seconds, 1),
            "by_status": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "by_error_type": dict(self.types),
            "versions": dict(self.versions),
            "user_cache": dict(self.user_cache),
            "accepted_per_s": round(self.statuses.get(200, 0) / max(self.seconds, 1e-9), 1),
            "accepted_p50_ms": self.pct(50),
            "accepted_p99_ms": self.pct(99),
            "refused_p50_ms": self.pct(50, refused=True),
            "refused_p99_ms": self.pct(99, refused=True),
            "problems": self.problems[:10],
            "missing_request_id": self.missing_request_id,
        }


Check = Callable[[int, dict], str | None]  # (body index, 200 answer) -> what is wrong, or None


class _Conn:
    """One keep-alive HTTP/1.1 connection speaking just what /rank needs. httpx costs about a
    millisecond of CPU per request, which on two shared cores is load taken from the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        data = await self.reader.readexactly(int(headers.get("content-length", 0)))
        return status, headers, data, headers.get("connection", "").lower() != "close"

    def close(self) -> None:
        self.writer.close()


class Load:
    """Sends /rank requests, closed loop (`concurrency` workers back to back) or open loop
    (Poisson arrivals at `rate` per second, however slowly the server answers), and records
    every answer. Bodies are pre-encoded bytes, so the driver costs little of the machine; worker
    `w` sends bodies w, w + concurrency, ... (modulo their number), so a sequence that builds each
    body when indexed can stand for more bodies than memory holds."""

    def __init__(
        self,
        url: str,
        bodies: Sequence[bytes],
        concurrency: int = 8,
        rate: float | None = None,
        check: Check | None = None,
        timeout_s: float = 10.0,
        seed: int = 0,
    ):
        self.url, self.bodies, self.concurrency, self.rate = url, bodies, concurrency, rate
        self.check, self.timeout_s = check, timeout_s
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port.split("/")[0])
        self.rng = np.random.default_rng(seed)
        self.result = LoadResult()
        self._idle: list[_Conn] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _head(self, body: bytes) -> bytes:
        return (
            f"POST /rank HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()

    async def run(self, seconds: float) -> LoadResult:
        t0 = time.perf_counter()
        end = t0 + seconds
        try:
            if self.rate is None:
                await asyncio.gather(*(self._worker(w, end) for w in range(self.concurrency)))
            else:
                await self._open_loop(end)
        finally:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
        self.result.seconds = time.perf_counter() - t0
        return self.result

    async def _worker(self, w: int, end: float) -> None:
        i = w
        while time.perf_counter() < end and not self._stop.is_set():
            await self._one(i % len(self.bodies))
            i += self.concurrency

    async def _open_loop(self, end: float) -> None:
        tasks: set[asyncio.Task] = set()
        i, next_at = 0, time.perf_counter()
        while next_at < end and not self._stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(i % len(self.bodies)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            next_at += self.rng.exponential(1.0 / self.rate)
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, i: int) -> None:
        r, body = self.result, self.bodies[i]
        t0 = time.perf_counter()
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._idle:  # a kept-alive connection the server may have closed meanwhile
                    conn = self._idle.pop()
                    try:
                        status, headers, data, keep = await conn.post(self._head(body), body)
                    except (ConnectionError, asyncio.IncompleteReadError) as e:
                        if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                            raise
                        conn.close()
                        conn = None
                if conn is None:
                    conn = await _Conn.open(self.host, self.port)
                    status, headers, data, keep = await conn.post(self._head(body), body)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            if conn is not None:
                conn.close()
            r.statuses["conn-error"] += 1
            r.problems.append(f"{type(e).__name__}: {e}")
            return
        if keep:
            self._idle.append(conn)
        else:
            conn.close()
        dt = time.perf_counter() - t0
        r.statuses[status] += 1
        if "x-request-id" not in headers:
            r.missing_request_id += 1
        if status == 200:
            r.accepted_s.append(dt)
            r.accepted_at.append(t0)
            out = orjson.loads(data)
            r.versions[out["model_version"]] += 1
            r.user_cache[out["user_cache"]] += 1
            if self.check is not None and (problem := self.check(i, out)):
                r.problems.append(problem)
            return
        if status == 503:
            r.refused_s.append(dt)
        try:
            r.types[orjson.loads(data)["error"]["type"]] += 1
        except (ValueError, KeyError, TypeError):
            r.types["unparseable"] += 1

    # ---- in a background thread, for tests and scripts that break things meanwhile -------------
    def start(self, seconds: float = 3600.0) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self.run(seconds)), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        return self.result

    def wait_for(self, n: int, timeout_s: float = 60.0) -> None:
        """Block until `n` more answers have come back."""
        goal, end = self.result.total + n, time.monotonic() + timeout_s
        while self.result.total < goal:
            if time.monotonic() > end:
                raise TimeoutError(f"load stalled at {self.result.total} answers")
            time.sleep(0.01)
