"""Real parts to break on purpose: a redis-server (and a Redis cluster) that can be killed,
restarted and paused, the service as a process, and model version folders. `make chaos`,
`make overload`, `make bench` and the reliability tests are built from these and the load driver
(loadtest/load.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


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

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.url, name, **labels)


def scrape(url: str) -> dict[str, float]:
    """Every sample of a service's /metrics, by its line's name and labels as the service writes
    them (`x{a="1",b="2"}`)."""
    got = httpx.get(f"{url}/metrics", timeout=10)
    if got.status_code == 404:  # a server without metrics (the naive baseline): none
        return {}
    got.raise_for_status()
    out = {}
    for line in got.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples (scrape's) of metric `name` whose labels include `labels`,
    whatever order the service writes labels in."""
    out = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base == name and labels.items() <= dict(_LABEL.findall(rest)).items():
            out += value
    return out


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a service's samples of metric `name` with `labels` (total), read now."""
    return total(scrape(url), name, **labels)


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
