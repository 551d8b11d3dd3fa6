"""The model manifest: what an exported version folder holds, written by export and read by the
service, defined once here (numpy only: no torch, no onnx, no FastAPI).

A version folder holds three ONNX graphs, `samples.npz` and `manifest.json`:

  user_tower   user_ids, user_weights [U, user width]                 -> user_repr [U, R]
  item_scorer  user_repr [U, R], user_index [N], item_ids, item_weights [N, item width]
                                                                       -> pctr, pcvr, pctcvr [N]
  full         user_ids, user_weights, item_ids, item_weights [N, ...] -> pctr, pcvr, pctcvr [N]

Identity. `digest` is a SHA-256 over everything that decides a score: each graph file's bytes,
the feature contract and the calibrators. Export records it; `read` recomputes it from the files
and refuses a folder whose graphs or content do not match. Caches key on the digest, never on
the folder's name: two exports that share a name (every image build exports `esmm/baked`) are
two models, and a copy of a folder under a new name is the same one.

`read` checks every field by name and says which one is wrong; a manifest of format 1 (before
the digest) is read too, its digest computed from its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from features.contract import FeatureContract

FORMAT_VERSION = 2
OUTPUTS = ("pctr", "pcvr", "pctcvr")
# graph name -> (input names, output names): the signature every export has and every loader
# expects, in the order the graphs declare them
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "user_tower": (("user_ids", "user_weights"), ("user_repr",)),
    "item_scorer": (("user_repr", "user_index", "item_ids", "item_weights"), OUTPUTS),
    "full": (("user_ids", "user_weights", "item_ids", "item_weights"), OUTPUTS),
}
GRAPHS = tuple(SIGNATURES)
FILE = "manifest.json"


class ManifestError(ValueError):
    """A manifest or version folder that cannot be served; the message names what is wrong."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclasses.dataclass(frozen=True)
class Graph:
    file: str
    sha256: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created_at: str
    model: Mapping[str, Any]  # kind, embed_dim, hidden, ..., user_repr_dim
    contract: FeatureContract
    graphs: Mapping[str, Graph]
    calibration: Mapping[str, Any] | None  # features/calibration.py dicts of pctr and pcvr
    metrics: Mapping[str, Any]
    parity: Mapping[str, Any]  # what export verified, with its tolerance
    exported_with: Mapping[str, Any]
    samples: str = "samples.npz"
    digest: str = ""  # filled by `with_digest` at export, checked by `read`

    @property
    def label(self) -> str:
        """NAME/VERSION: for people (logs, responses); never an identity."""
        return f"{self.name}/{self.version}"

    @property
    def kind(self) -> str:
        return str(self.model["kind"])

    @property
    def user_repr_dim(self) -> int:
        return int(self.model["user_repr_dim"])

    def content_digest(self) -> str:
        content = {
            "graphs": {g: self.graphs[g].sha256 for g in GRAPHS},
            "feature_contract": self.contract.to_dict(),
            "calibration": self.calibration or {},
            "outputs": list(OUTPUTS),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def with_digest(self) -> Manifest:
        return dataclasses.replace(self, digest=self.content_digest())

    # ---- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "created_at": self.created_at,
            "model": dict(self.model),
            "feature_contract": self.contract.to_dict(),
            "graphs": {g: dataclasses.asdict(spec) for g, spec in self.graphs.items()},
            "outputs": list(OUTPUTS),
            # post-hoc calibrators of pctr and pcvr, applied by the service after the graphs;
            # samples.npz holds the graphs' own (raw) outputs
            "calibration": self.calibration,
            "samples": self.samples,
            "metrics": dict(self.metrics),
            "parity": dict(self.parity),
            "exported_with": dict(self.exported_with),
        }

    def write(self, folder: Path) -> None:
        if not self.digest:
            raise ManifestError("a manifest is written with its digest (with_digest)")
        (Path(folder) / FILE).write_text(json.dumps(self.to_dict(), indent=2))


def graph_spec(path: Path, inputs: list[Tensor], outputs: list[Tensor]) -> Graph:
    return Graph(path.name, file_sha256(path), tuple(inputs), tuple(outputs))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(folder: Path) -> Manifest:
    """The manifest of a version folder, every field checked, its graphs' bytes and digest
    verified; raises ManifestError naming what is wrong."""
    folder = Path(folder)
    try:
        d = json.loads((folder / FILE).read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(f"unreadable {FILE} ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ManifestError(f"{FILE} is not a JSON object")
    r = _Reader(d)
    fmt = r.get("format_version", int)
    if fmt not in (1, FORMAT_VERSION):
        raise ManifestError(f"format_version {fmt} is not one this build reads (1, 2)")
    try:
        contract = FeatureContract.from_dict(r.get("feature_contract", dict))
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"feature_contract: {e}") from None
    if not contract.fitted:
        raise ManifestError("feature_contract has no bucket sizes")
    model = r.get("model", dict)
    for key, kind in (("kind", str), ("user_repr_dim", int)):
        if not isinstance(model.get(key), kind):
            raise ManifestError(f"model.{key} is missing or not a {kind.__name__}")
    if r.get("outputs", list) != list(OUTPUTS):
        raise ManifestError(f"outputs is {d['outputs']}, this build serves {list(OUTPUTS)}")
    graphs = {g: _graph(g, r.get("graphs", dict).get(g), folder) for g in GRAPHS}
    calibration = d.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise ManifestError("calibration is not an object")
    m = Manifest(
        name=r.get("name", str),
        version=r.get("version", str),
        created_at=r.get("created_at", str),
        model=model,
        contract=contract,
        graphs=graphs,
        calibration=calibration,
        metrics=r.get("metrics", dict),
        parity=r.get("parity", dict),
        exported_with=d.get("exported_with") or {},
        samples=d.get("samples", "samples.npz"),
    )
    digest = m.content_digest()
    if fmt >= 2 and r.get("digest", str) != digest:
        raise ManifestError(
            f"digest {d['digest'][:12]}... does not match the folder's content ({digest[:12]}...)"
        )
    return dataclasses.replace(m, digest=digest)


class _Reader:
    def __init__(self, d: dict):
        self.d = d

    def get(self, key: str, kind: type):
        if key not in self.d:
            raise ManifestError(f"{key} is missing")
        v = self.d[key]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ManifestError(f"{key} is not a {kind.__name__}")
        return v


def _graph(name: str, d: object, folder: Path) -> Graph:
    if not isinstance(d, dict):
        raise ManifestError(f"graphs.{name} is missing")
    try:
        spec = Graph(
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            inputs=tuple(Tensor(t["name"], t["dtype"], tuple(t["shape"])) for t in d["inputs"]),
            outputs=tuple(Tensor(t["name"], t["dtype"], tuple(t["shape"])) for t in d["outputs"]),
        )
    except (KeyError, TypeError) as e:
        raise ManifestError(f"graphs.{name}: {type(e).__name__} {e}") from None
    want_in, want_out = SIGNATURES[name]
    got = tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs)
    if got != (want_in, want_out):
        raise ManifestError(
            f"graphs.{name}: the manifest says inputs/outputs {list(got[0])}/{list(got[1])}, "
            f"a {name} graph has {list(want_in)}/{list(want_out)}"
        )
    if Path(spec.file).name != spec.file or spec.file != f"{name}.onnx":
        raise ManifestError(f"graphs.{name}.file is {spec.file!r}, expected {name}.onnx")
    path = folder / spec.file
    try:
        actual = file_sha256(path)
    except OSError:
        raise ManifestError(f"{spec.file} is missing") from None
    if actual != spec.sha256:
        raise ManifestError(f"{spec.file} does not match the sha256 the manifest records")
    return spec
