"""The GPU machine's side of gpu/wheels.sh: keep the parts each run carried, then join, check and
unpack them. Standard library only (the machine has Python and nothing of this project's).

    python3 gpu/unpack.py stash  SRC PARTS   # copy SRC/part-* into PARTS, check them against SUMS
    python3 gpu/unpack.py unpack PARTS STAGE # all parts there? join, check, xz-decompress, untar

SUMS (written by wheels.sh, carried with every part) holds one `sha256  name` line per part and
one for the joined pack: a part damaged or missing is named, never unpacked. The parts live in
PARTS (under /tmp) between runs, which lasts only while the machine stays up.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import sys
import tarfile
from pathlib import Path

PACK = "pack.tar.xz"


def sums(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):  # "# key=value ...": what the pack holds
            digest, name = line.split()
            out[name] = digest
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def stash(src: Path, parts: Path) -> None:
    """Copy the parts this run carried (and SUMS) into `parts`; report every part's state."""
    parts.mkdir(parents=True, exist_ok=True)
    if (src / "SUMS").is_file():
        shutil.copy(src / "SUMS", parts / "SUMS")
    for p in sorted(src.glob("part-*")):
        if not (parts / p.name).is_file() or sha256(parts / p.name) != sha256(p):
            shutil.copy(p, parts / p.name)
            print(f"stashed {p.name} ({p.stat().st_size / 2**20:.1f} MiB)")
    report(parts)


def report(parts: Path) -> list[str]:
    """Print what the pack holds and each part's state; the names of those missing or damaged."""
    if not (parts / "SUMS").is_file():
        sys.exit(f"no SUMS in {parts}: carry .whl/SUMS with every part")
    print(*(ln for ln in (parts / "SUMS").read_text().splitlines() if ln.startswith("#")))
    want = {k: v for k, v in sums(parts / "SUMS").items() if k != PACK}
    bad = []
    for name, digest in sorted(want.items()):
        p = parts / name
        state = "ok" if p.is_file() and sha256(p) == digest else "damaged" if p.is_file() else "-"
        if state != "ok":
            bad.append(name)
        print(f"  {name}: {state}")
    print(f"{len(want) - len(bad)} of {len(want)} parts in {parts}")
    return bad


def unpack(parts: Path, stage: Path) -> None:
    bad = report(parts)
    if bad:
        sys.exit(
            f"missing or damaged: {', '.join(bad)}. The machine keeps /tmp only while it stays "
            "up: send the parts again, one run right after the other (gpu/CALLS.md)"
        )
    want = sums(parts / "SUMS")
    names = sorted(n for n in want if n != PACK)
    h = hashlib.sha256()
    for n in names:
        with (parts / n).open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    if h.hexdigest() != want[PACK]:
        sys.exit("the joined parts do not match the pack wheels.sh made")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    joined = _Joined([parts / n for n in names])
    with joined, lzma.open(joined) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        tar.extractall(stage, filter="data")
    print(f"unpacked {len(names)} parts into {stage}")


class _Joined:
    """The parts read back to back as one file (no joined copy on disk)."""

    def __init__(self, paths: list[Path]):
        self.paths, self.f = list(paths), None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.f:
            self.f.close()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = b""
        while n < 0 or len(out) < n:
            if self.f is None:
                if not self.paths:
                    break
                self.f = self.paths.pop(0).open("rb")
            chunk = self.f.read(-1 if n < 0 else n - len(out))
            if not chunk:
                self.f.close()
                self.f = None
                continue
            out += chunk
        return out


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in ("stash", "unpack"):
        sys.exit(__doc__)
    {"stash": stash, "unpack": unpack}[argv[0]](Path(argv[1]), Path(argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
