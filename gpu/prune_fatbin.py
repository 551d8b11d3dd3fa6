"""Zero the GPU code a shared library carries for architectures other than the ones kept.

onnxruntime-gpu's CUDA provider (`libonnxruntime_providers_cuda.so`, 284 MB) is mostly its
`.nv_fatbin` section: 609 fat binaries, each with one zstd-compressed cubin per architecture
(sm_75, 80, 86, 89, 90, 120 in 1.31.1). A GPU loads only the cubin of its own architecture (the
driver reads each entry's header and picks one), so for an H100 or H200 (sm_90) the other five
are dead weight. This keeps every byte in place (the ELF layout, the section, every fat binary
and entry header) and overwrites the payloads of the other architectures' entries with zeros,
which any compressor then shrinks to nothing. PTX entries at or below a kept architecture are
kept too (a driver can compile them for a newer GPU). The result runs only on the architectures
kept: a pruned library on another GPU finds zeros where its cubin was and fails to load.

    python gpu/prune_fatbin.py LIB [--keep 90] [--out PRUNED]   # prints what it kept

Standard library only: it runs wherever the wheels are prepared.
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2


def section(data: bytes | bytearray, name: str) -> tuple[int, int]:
    """(file offset, size) of an ELF64 little-endian section."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    for name_off, _type, _flags, _addr, off, size in headers:
        end = data.index(b"\0", strtab + name_off)
        if data[strtab + name_off : end].decode() == name:
            return off, size
    raise ValueError(f"no {name} section")


def prune(data: bytearray, keep: set[int]) -> collections.Counter:
    """Zero, in place, the payload of every fat-binary entry not for an architecture in `keep`
    (PTX at or below max(keep) is kept). Returns bytes kept and zeroed by (kind, sm, action)."""
    off, size = section(data, ".nv_fatbin")
    tally: collections.Counter = collections.Counter()
    pos, end = off, off + size
    while pos < end:
        if struct.unpack_from("<I", data, pos)[0] != FATBIN_MAGIC:
            pos += 8  # alignment padding between fat binaries
            continue
        _magic, _version, header, fat_size = struct.unpack_from("<IHHQ", data, pos)
        entry, stop = pos + header, pos + header + fat_size
        while entry < stop:
            kind, _v, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            kept = sm in keep or (kind == KIND_PTX and sm <= max(keep))
            start = entry + entry_header
            if not kept:
                data[start : start + payload] = bytes(payload)
            tally[(kind, sm, "kept" if kept else "zeroed")] += payload
            entry = start + payload
        if entry != stop:
            raise ValueError(f"fat binary at {pos:#x} does not end where its header says")
        pos = stop
    return tally


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("lib", type=Path)
    p.add_argument("--keep", default="90", help="comma-separated SM versions (90: H100, H200)")
    p.add_argument("--out", type=Path, help="default: rewrite LIB in place")
    args = p.parse_args(argv)
    data = bytearray(args.lib.read_bytes())
    tally = prune(data, {int(x) for x in args.keep.split(",")})
    (args.out or args.lib).write_bytes(data)
    for (kind, sm, action), n in sorted(tally.items()):
        what = {KIND_PTX: "ptx", KIND_CUBIN: "cubin"}.get(kind, f"kind {kind}")
        print(f"  sm_{sm} {what}: {n / 1e6:.1f} MB {action}", file=sys.stderr)


if __name__ == "__main__":
    main()
