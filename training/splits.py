"""`load_split`: an Ali-CCP split read once (by the columnar reader, or the line-by-line
reference) into fixed-width arrays on disk, keyed by the files and the contract, and memory-mapped
on every later run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np

from features.contract import FeatureContract
from training.aliccp import read_action, read_aliccp
from training.columnar import read_columnar
from training.encoded import EncodedSplit, OrphanPolicy, ReadReport

Reader = Literal["columnar", "python"]
FORMAT_VERSION = 1


def _cache_key(data_dir: Path, split: str, contract: FeatureContract, orphans: OrphanPolicy) -> str:
    files = [Path(data_dir) / f"{p}_{split}.csv" for p in ("common_features", "sample_skeleton")]
    stat = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    lens = {f.name: f.max_len for f in contract.fields}
    blob = json.dumps([FORMAT_VERSION, stat, lens, orphans], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_split(
    data_dir: Path,
    split: str,
    contract: FeatureContract,
    cache_dir: Path,
    orphans: OrphanPolicy = "drop",
    reader: Reader = "columnar",
) -> EncodedSplit:
    """Read a split once into `cache_dir/<split>-<key>/` and memory-map it afterwards.

    `reader` picks the columnar reader (training/columnar.py, the default: a 10 GB file in
    minutes) or `read_aliccp`, the line-by-line reference; both write the same arrays and report,
    so the cache does not depend on which one filled it."""
    key = _cache_key(data_dir, split, contract, orphans)
    target = Path(cache_dir) / f"{split}-{key}"
    meta_path = target / "meta.json"
    if not meta_path.is_file():
        # Written beside the target and renamed into place: an interrupted read leaves no cache.
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if reader == "columnar":
            split_data = read_columnar(data_dir, split, contract, tmp, orphans)
        elif reader == "python":
            split_data = read_aliccp(data_dir, split, contract, tmp, orphans)
        else:
            raise ValueError(f"reader must be 'columnar' or 'python', got {reader!r}")
        meta = {
            "n_users": len(split_data.user_ids),
            "n_rows": len(split_data),
            "report": dataclasses.asdict(split_data.report),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        del split_data
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    meta = json.loads(meta_path.read_text())
    u, n = meta["n_users"], meta["n_rows"]
    arr = {p.stem: np.load(p, mmap_mode="r") for p in target.glob("*.npy")}
    action = _cached_action(data_dir, split, target, arr["sample_id"][:n], arr["click"][:n])
    return EncodedSplit.from_arrays(arr, u, n, ReadReport(**meta["report"]), action)


def _cached_action(
    data_dir: Path, split: str, target: Path, sample_id: np.ndarray, click: np.ndarray
) -> np.ndarray | None:
    """read_action, kept beside the encoded split (keyed by the label file's size and mtime):
    parsing a 2M-line label file costs seconds, and a comparison loads each split per run."""
    path = Path(data_dir) / f"action_{split}.csv"
    if not path.is_file():
        return None
    st = path.stat()
    cached = target / f"action-{st.st_size}-{st.st_mtime_ns}.npy"
    if not cached.is_file():
        action = read_action(data_dir, split, np.asarray(sample_id), click)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.npy")
        np.save(tmp, action)
        os.replace(tmp, cached)
    return np.load(cached, mmap_mode="r")
