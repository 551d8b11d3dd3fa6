"""How fast the two Ali-CCP readers read a split, and the memory they hold while they do.

    python -m training.read_bench --data DIR [--split train] [--python-lines 300000] [--out DIR]

Each read runs in a child process of its own and writes its arrays to a scratch folder, as
load_split does. Peak RSS is the child's ru_maxrss (from wait4); the parent also polls the
child's anonymous memory (RssAnon), which leaves out the pages of the memory-mapped output.
Each file's wall and CPU seconds come from the total the reader logs when it is done with it
(training.encoded.read_progress, at DEBUG), so each file gets its own rate within one read.

- the columnar reader (training/columnar.py) reads the whole split;
- the reference (`read_aliccp`, line by line) and the columnar reader both read a prefix:
  the first --python-lines skeleton lines and the common-features lines they refer to; both
  outputs are compared there, array for array.

Extrapolation to the real Ali-CCP train skeleton (10 GB, 42.3M lines) scales the measured
skeleton bytes/s by bytes, and says so. The input files are read once before any timing, so every
reader finds them in the page cache. The machine's load and busiest processes at the start and
the end are recorded: figures taken beside other work are disturbed by it.

Writes read_bench.json and read_bench.md under --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL_SKELETON_BYTES = 10e9  # Ali-CCP's sample_skeleton_train.csv, as DESIGN.md gives it
REAL_SKELETON_LINES = 42.3e6


def _child(reader: str, data: Path, split: str, out: Path) -> None:
    """Read one split (in this process) and print what it took as JSON, each file's wall and
    CPU seconds from the total the reader logs (at DEBUG) when it has read the file."""
    from features.contract import FeatureContract
    from training.aliccp import read_aliccp
    from training.columnar import read_columnar

    files: dict[str, dict] = {}
    cpu_at = [time.process_time()]

    class Totals(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.fullmatch(r"read (\S+): [\d,]+ lines in ([\d.]+) s", record.getMessage())
            if m:
                cpu_at.append(time.process_time())
                files[m[1]] = {"wall_s": float(m[2]), "cpu_s": cpu_at[-1] - cpu_at[-2]}

    log = logging.getLogger("training.encoded")
    log.setLevel(logging.DEBUG)
    log.addHandler(Totals())
    read = read_columnar if reader == "columnar" else read_aliccp
    wall = time.perf_counter()
    s = read(data, split, FeatureContract.default(), out)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu_at[0]
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "files": files,
                "rows": len(s),
                "users": len(s.user_ids),
                "lines": s.report.lines,
            }
        )
    )


def _run(reader: str, data: Path, split: str, out: Path) -> dict:
    """One read in a child process writing to `out`: its figures, peak RSS and peak anonymous
    RSS (MiB)."""
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "training.read_bench", "--child", reader]
    cmd += ["--data", str(data), "--split", split, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    anon = 0
    while True:  # wait4, not Popen.wait: it hands back the child's own rusage
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
            anon = max(anon, int(text.split("RssAnon:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"the {reader} read of {data} failed (exit {proc.returncode})")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["peak_anon_mib"] = anon / 1024
    return result


def _prefix(data: Path, split: str, lines: int, to: Path) -> None:
    """The first `lines` skeleton lines and the common-features lines they refer to."""
    to.mkdir(parents=True, exist_ok=True)
    keys = set()
    with (
        open(data / f"sample_skeleton_{split}.csv", "rb") as f,
        open(to / f"sample_skeleton_{split}.csv", "wb") as out,
    ):
        for _, line in zip(range(lines), f, strict=False):
            out.write(line)
            keys.add(line.split(b",", 4)[3])
    with (
        open(data / f"common_features_{split}.csv", "rb") as f,
        open(to / f"common_features_{split}.csv", "wb") as out,
    ):
        out.writelines(line for line in f if line.split(b",", 1)[0] in keys)


def _files(data: Path, split: str) -> dict:
    out = {}
    for kind in ("common_features", "sample_skeleton"):
        path = data / f"{kind}_{split}.csv"
        with open(path, "rb") as f:  # read once: every reader then finds it in the page cache
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
        out[kind] = {"bytes": path.stat().st_size, "lines": n}
    return out


def _measure(reader: str, data: Path, split: str, out: Path) -> dict:
    """One reader on one split: the whole read and a rate for each file."""
    files = _files(data, split)
    run = _run(reader, data, split, out)
    rates = {}
    for kind, short in (("common_features", "common"), ("sample_skeleton", "skeleton")):
        f, took = files[kind], run["files"][f"{kind}_{split}.csv"]
        rates[short] = {
            **took,
            "MB/s": f["bytes"] / 1e6 / took["wall_s"],
            "lines/s": f["lines"] / took["wall_s"],
        }
    return {"reader": reader, "data": str(data), "files": files, "whole": run, **rates}


def _same(a: Path, b: Path) -> bool:
    """The two readers' arrays (first `rows` of each, as load_split slices them) are equal."""
    arrays = [{p.stem: np.load(p, mmap_mode="r") for p in d.glob("*.npy")} for d in (a, b)]
    return all(np.array_equal(arrays[0][k], arrays[1][k]) for k in arrays[0])


def _machine() -> dict:
    """Load averages and the busiest processes over one second (top's second frame)."""
    frames = subprocess.run(
        ["top", "-b", "-n", "2", "-d", "1", "-c", "-o", "%CPU", "-w", "160"],
        capture_output=True,
        text=True,
    ).stdout.split("\ntop - ")
    table = frames[-1].split("\n\n", 1)[-1].splitlines()
    return {"loadavg": os.getloadavg(), "cpus": os.cpu_count(), "top": table[:7]}


def _markdown(result: dict) -> str:
    rows = [
        "| reader | input | skeleton lines/s | skeleton MB/s | common MB/s | wall s | CPU s | "
        "peak RSS MiB | peak anon MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        sk = r["files"]["sample_skeleton"]
        rows.append(
            f"| {r['reader']} | {r['label']}: {sk['lines']:,} lines, "
            f"{(sk['bytes'] + r['files']['common_features']['bytes']) / 1e6:,.0f} MB | "
            f"{r['skeleton']['lines/s']:,.0f} | {r['skeleton']['MB/s']:.1f} | "
            f"{r['common']['MB/s']:.1f} | {r['whole']['wall_s']:.1f} | {r['whole']['cpu_s']:.1f} | "
            f"{r['whole']['peak_rss_mib']:,.0f} | {r['whole']['peak_anon_mib']:,.0f} |"
        )
    lines = ["\n".join(rows), ""]
    for reader, x in result["extrapolation"].items():
        lines.append(
            f"- {reader}: the 10 GB skeleton (42.3M lines) in about {x['s_by_bytes'] / 60:.1f} min "
            f"(scaled by bytes; {x['s_by_lines'] / 60:.1f} min by lines), plus the common file "
            f"at {x['common_MB/s']:.0f} MB/s"
        )
    lines.append(f"- prefix outputs identical: {result['prefix_identical']}")
    lines.append(
        f"- load average at start / end: {result['machine_start']['loadavg']} / "
        f"{result['machine_end']['loadavg']}"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--python-lines", type=int, default=300_000)
    ap.add_argument("--out", type=Path, default=Path("runs/read_bench"))
    ap.add_argument("--child", choices=["columnar", "python"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args.child, args.data, args.split, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine_start": _machine(), "runs": []}
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        scratch = Path(tmp)
        prefix = scratch / "prefix"
        _prefix(args.data, args.split, args.python_lines, prefix)
        for reader, data, label in (
            ("columnar", args.data, "whole split"),
            ("columnar", prefix, "prefix"),
            ("python", prefix, "prefix"),
        ):
            out = scratch / f"{reader}-{label}"
            run = _measure(reader, data, args.split, out)
            run["label"] = label
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            if label == "whole split":  # gigabytes; only the prefixes are compared
                shutil.rmtree(out)
        result["prefix_identical"] = _same(scratch / "columnar-prefix", scratch / "python-prefix")
    result["machine_end"] = _machine()
    result["extrapolation"] = {
        r["reader"]: {
            "s_by_bytes": REAL_SKELETON_BYTES / (r["skeleton"]["MB/s"] * 1e6),
            "s_by_lines": REAL_SKELETON_LINES / r["skeleton"]["lines/s"],
            "common_MB/s": r["common"]["MB/s"],
            "from": r["label"],
        }
        for r in result["runs"][::-1]  # the whole split's figure wins for the columnar reader
    }
    (args.out / "read_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (args.out / "read_bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
