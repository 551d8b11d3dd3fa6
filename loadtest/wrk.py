"""wrk, a load generator written in C, driving POST /rank as callers do: closed loop (`connections`
callers, each sending its next request when the last is answered) or open loop (requests arrive
at `rate` per second, Poisson: each connection waits an exponential think time between requests,
`connections` / `rate` on average, so with enough connections the arrivals do not wait for the
answers). It costs a fraction of a core where the Python driver (loadtest/load.py) costs about
a millisecond of CPU per request: on a 2-core machine that is the difference between measuring
the server and measuring the driver.

Each run reports what the caller saw (requests per second achieved against those offered,
latency percentiles p50/p90/p99/p999 from wrk's own histogram, answers by status) and what the
server used: its CPU time over the run, in cores (`/proc`, the server's process and its
children). wrk comes from Debian's package (`make bench` installs it where missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# One Lua state per wrk thread. `init` loads the bodies (one per line) and starts at a place of
# its own; `delay` draws the think time; `response` counts statuses; `done` prints one JSON line.
LUA = r"""
local bodies, n, at = {}, 0, 0
local think_ms, threads = 0, {}
counts = {}  -- a global: `done` reads each thread's with thread:get
function setup(thread) table.insert(threads, thread) end
function init(args)
  for line in io.lines(args[1]) do n = n + 1; bodies[n] = line end
  think_ms = tonumber(args[2])
  at = tonumber(args[3]) % n
  math.randomseed(tonumber(args[3]) + 1)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  at = at % n + 1
  return wrk.format(nil, "/rank", nil, bodies[at])
end
if tonumber(os.getenv("WRK_THINK_MS") or "0") > 0 then
  function delay() return -think_ms * math.log(1 - math.random()) end
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local statuses = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do statuses[tostring(k)] = (statuses[tostring(k)] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(statuses) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "seconds": %.6f, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d, "mean_us": %.1f, "by_status": {%s}, "errors": ' ..
    '{"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout))
end
"""


def duration(seconds: float) -> int:
    """What wrk runs for `seconds`: whole seconds, at least one."""
    return max(1, round(seconds))


def available() -> bool:
    return shutil.which("wrk") is not None


def _ticks(pid: int) -> int:
    """CPU time (clock ticks) of `pid` and of its living children, threads included."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class Bodies:
    """Request bodies in a file, one per line, for wrk's script."""

    def __init__(self, bodies: Sequence[bytes]):
        self.dir = Path(tempfile.mkdtemp(prefix="wrk-"))
        self.path = self.dir / "bodies.jsonl"
        with open(self.path, "wb") as f:
            for b in bodies:
                if b"\n" in b:
                    raise ValueError("a body for wrk must be one line")
                f.write(b + b"\n")
        self.script = self.dir / "rank.lua"
        self.script.write_text(LUA)
        self.count = len(bodies)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run(
    url: str,
    bodies: Bodies,
    seconds: float,
    connections: int,
    rate: float | None = None,
    server_pid: int | None = None,
    threads: int = 1,
    offset: int = 0,
) -> dict:
    """One wrk run against `url`: closed loop with `connections` callers, or, with `rate`, open
    loop at `rate` requests per second spread over `connections`. `offset`: where in the bodies
    the run starts (a fresh place per run keeps cache misses misses)."""
    think_ms = 0.0 if rate is None else 1000.0 * connections / rate
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration(seconds)}s",
        "--timeout",
        "10s",
        "-s",
        str(bodies.script),
        url,
        "--",
        str(bodies.path),
        f"{think_ms:.4f}",
        str(offset),
    ]
    env = {**os.environ, "WRK_THINK_MS": f"{think_ms:.4f}"}
    hz = os.sysconf("SC_CLK_TCK")
    before, t0 = (_ticks(server_pid) if server_pid else 0), time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    used = (_ticks(server_pid) - before) / hz / wall if server_pid else None
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    r = json.loads(line.removeprefix("WRK_RESULT "))
    ok = r["by_status"].get("200", 0)
    return {
        "connections": connections,
        "offered_per_s": rate,
        "requests": r["requests"],
        "seconds": round(r["seconds"], 3),
        "achieved_per_s": round(r["requests"] / r["seconds"], 1),
        "accepted_per_s": round(ok / r["seconds"], 1),
        "by_status": r["by_status"],
        "errors": r["errors"],
        **{k.replace("_us", "_ms"): r[k] / 1e3 for k in ("p50_us", "p90_us", "p99_us")},
        "p999_ms": r["p999_us"] / 1e3,
        "max_ms": r["max_us"] / 1e3,
        "server_cores": None if used is None else round(used, 2),
    }
