"""RANKER_WORKERS > 1: several server processes on one port, one listening socket between them.

Why. One process serves with one event loop, and the loop's Python work per request (about
1.6 ms by ids on this machine, docs/benchmarks.md) caps a process near 600 requests/s on one
core however fast the item scorer is: on 2 cores the second sat a third idle. Each worker is a
whole `ranker serve` process (its event loop, its scorer thread, its model and item table, its
process user cache; Redis, when set, is shared), so the cores serve in parallel.

How. This process (the supervisor) binds RANKER_HOST:RANKER_PORT once and starts the workers as
fresh interpreters that inherit the socket (`python -m service --listen-fd N`); the kernel
spreads new connections over the processes accepting on it. The supervisor serves nothing:

- metrics: it gives the workers one PROMETHEUS_MULTIPROC_DIR, so the `/metrics` any worker
  answers sums every worker's counters and histograms (prometheus_client's multiprocess mode;
  gauges by their own rule: requests in flight and queued rows summed, the breaker's and the
  model's the highest); a worker's files are marked dead when it exits;
- signals: SIGTERM or SIGINT is passed to every worker, each drains as one process does
  (service/server.py), and the supervisor exits 0 when all did;
- a worker that dies on its own stops the others and the supervisor, with the worker's status,
  so whatever restarts the service (compose, Kubernetes) starts it whole again.

What it changes. `POST /admin/reload` is off (403): it would reach one worker, so a reload or
a pin would hold in one process of N. Every worker's watcher follows new versions
(RANKER_RELOAD_POLL_S); to serve one version, point RANKER_MODEL_DIR at it. Memory is N models
and N item tables (the table's arrays are built per process), and each worker's process cache
warms on its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from service.config import Settings

log = logging.getLogger("service")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def listen(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def supervise(settings: Settings) -> int:
    """Start settings.workers workers on one socket and wait: the exit status of the service."""
    sock = listen(settings)
    metrics_dir = tempfile.mkdtemp(prefix="ranker-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    cmd = [sys.executable, "-m", "service", "--listen-fd", str(sock.fileno())]
    workers = [
        subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),)) for _ in range(settings.workers)
    ]
    log.info(
        "%d workers on %s:%d (pids %s)",
        len(workers),
        settings.host,
        settings.port,
        ", ".join(str(w.pid) for w in workers),
    )
    stopping = False

    def stop(sig: int, frame) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w.poll() is None:
                w.send_signal(sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    died: dict[int, int] = {}  # pid -> exit status, in the order the workers ended
    try:
        while len(died) < len(workers):
            for w in workers:
                if w.pid in died or w.poll() is None:
                    continue
                died[w.pid] = w.returncode
                _mark_dead(w.pid, metrics_dir)
                if not stopping:  # died on its own: the service stops whole
                    log.error("worker %d exited with %d: stopping the others", w.pid, w.returncode)
                    stop(signal.SIGTERM, None)
            time.sleep(0.1)
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # the first failure's status, as a shell gives it (128 + the signal that killed it)
    first = next((code for code in died.values() if code != 0), 0)
    return first if first >= 0 else 128 - first


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # its live gauges leave the sums


def inherited(fd: int) -> socket.socket:
    """The supervisor's listening socket, in a worker."""
    return socket.socket(fileno=fd)
