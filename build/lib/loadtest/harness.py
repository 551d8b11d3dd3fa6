"""Real parts to break on purpose: a redis-server that can be killed, restarted and paused, the
service as a process, model version folders, and an asyncio load driver that counts every
answer. `make chaos`, `make overload`, `make bench` and the reliability tests are built from
these.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, up: bool, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if (s.connect_ex(("127.0.0.1", port)) == 0) == up:
                return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'}")


class RedisServer:
    """A throwaway redis-server on its own port (nothing kept on disk)."""

    def __init__(self, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing (`make redis-server` installs it)")
        self.binary, self.port = binary, port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        """redis-server's command line after the binary."""
        port = ["--port", str(self.port), "--bind", "127.0.0.1"]
        return port + ["--save", "", "--appendonly", "no", "--dir", self.dir]

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, *self.args()], stdout=subprocess.DEVNULL)
        _wait_port(self.port, up=True)
        return self

    def kill(self) -> None:
        """SIGKILL: the way a crash or an OOM kill looks to clients."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        _wait_port(self.port, up=False)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServiceProcess:
    """`python -m service` on a free port, configured through RANKER_* variables (`module`: another
    server that reads the same settings, such as the benchmark's naive baseline)."""

    def __init__(self, log_path: Path | None = None, module: str = "service", **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RANKER_PORT": str(self.port)}
        env.update({f"RANKER_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = log_path
        out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = 120.0) -> ServiceProcess:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the service did not become ready")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout_s)

    def metric(self, name: str) -> float:
        return metric(self.url, name)


def metric(url: str, name: str) -> float:
    """The sum of the samples on a service's /metrics whose line starts with `name` (labels
    included, as the service writes them: `x{a="1",b="2"}` names one sample)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def copy_version(src: Path, root: Path, version: str) -> Path:
    """A copy of model folder `src` as `root/NAME/version`, its manifest renamed to match (the
    weights are the same: scores of a copy equal those of its source)."""
    manifest = json.loads((src / "manifest.json").read_text())
    dst = root / manifest["name"] / version
    tmp = dst.with_name(f".{version}.tmp")
    shutil.copytree(src, tmp)
    manifest["version"] = version
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(dst)  # appears whole: a watcher never sees half a folder
    return dst


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


def _bus_free_port() -> int:
    """A free port whose cluster bus port (+10000, fixed before Redis 7's `cluster-port`) is free
    too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class _ClusterNode(RedisServer):
    """One redis-server of a cluster: its node config lives in its own dir, so after a kill it
    restarts as the same node, owning the same slots (empty: nothing is kept on disk)."""

    def __init__(self, node_timeout_ms: int):
        super().__init__(_bus_free_port())
        self.node_timeout_ms = node_timeout_ms

    def args(self) -> list[str]:
        return super().args() + [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
        ]


class RedisClusterServer:
    """A throwaway Redis Cluster of `n` masters and no replicas on free ports, the slots split
    evenly by `redis-cli --cluster create`. `nodes[i]` can be killed, restarted and paused like a
    RedisServer. `node_timeout_ms` is how long the others wait before they call a silent node
    failed (and, with no replica to promote, the whole cluster down)."""

    def __init__(self, n: int = 3, node_timeout_ms: int = 1000):
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is missing (`make redis-server` installs it)")
        self.cli = cli
        self.nodes = [_ClusterNode(node_timeout_ms) for _ in range(n)]

    def url(self, i: int = 0) -> str:
        """The service's URL of the cluster, node `i` as the one it asks first."""
        return f"redis+cluster://127.0.0.1:{self.nodes[i].port}"

    def start(self) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )
        self.wait_ok()
        return self

    def ask(self, i: int, *command: str) -> str:
        """redis-cli's answer of node `i` to `command`."""
        args = [self.cli, "-p", str(self.nodes[i].port), *command]
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node running says `cluster_state:ok`."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            live = [i for i, node in enumerate(self.nodes) if node.proc.poll() is None]
            if all("cluster_state:ok" in self.ask(i, "cluster", "info") for i in live):
                return
            time.sleep(0.05)
        raise TimeoutError("the cluster did not reach cluster_state:ok")

    def dbsize(self, i: int) -> int:
        return int(self.ask(i, "dbsize"))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
