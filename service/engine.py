"""ONNX Runtime sessions of one exported model: numpy in, numpy out, synchronous.

The engine knows nothing of HTTP, caching or batching. It loads a model version folder, checks
the manifest against the graphs it finds (names, shapes, dtypes) and refuses a mismatch with a
message that names it, and reports the providers that really run: onnxruntime-gpu silently
falls back to the CPU when CUDA libraries are missing, so the requested list proves nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features import manifest, parity
from features.calibration import Calibrator
from features.manifest import OUTPUTS

log = logging.getLogger("service.engine")


class ModelError(RuntimeError):
    """A model folder that cannot be served; the message says why."""


def newest_version(model_dir: Path) -> Path:
    """model_dir itself when it holds a manifest, else its newest NAME/VERSION (or VERSION)
    folder by version name (versions are UTC timestamps, so the name sorts by age)."""
    model_dir = Path(model_dir)
    if (model_dir / manifest.FILE).is_file():
        return model_dir
    found = sorted(model_dir.glob(f"*/{manifest.FILE}")) + sorted(
        model_dir.glob(f"*/*/{manifest.FILE}")
    )
    if not found:
        raise ModelError(f"no exported model under {model_dir} (run `make train`)")
    return max(found, key=lambda p: (p.parent.name, str(p))).parent


@dataclass(frozen=True)
class Scores:
    pctr: np.ndarray
    pcvr: np.ndarray
    pctcvr: np.ndarray


class Engine:
    def __init__(self, folder: Path, providers: str = "auto", intra_op_threads: int = 1):
        self.folder = Path(folder)
        try:
            self.manifest = manifest.read(self.folder)
        except manifest.ManifestError as e:
            raise ModelError(f"{self.folder.name}: {e}") from None
        m = self.manifest
        self.contract, self.version, self.digest = m.contract, m.label, m.digest
        try:
            self.calibration = {
                k: Calibrator.from_dict(v) for k, v in (m.calibration or {}).items()
            }
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{self.version}: bad calibration in the manifest ({e})") from e
        if set(self.calibration) - {"pctr", "pcvr"}:
            raise ModelError(f"{self.version}: calibration is for pctr and pcvr only")
        self.repr_dim = m.user_repr_dim
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        wanted = _providers(providers)
        self.sessions = {}
        for name in manifest.GRAPHS:
            path = self.folder / m.graphs[name].file
            try:
                self.sessions[name] = ort.InferenceSession(str(path), opts, providers=wanted)
            except Exception as e:  # onnxruntime raises its own untyped errors
                why = str(e).replace(str(self.folder.resolve()), self.folder.name)
                raise ModelError(f"{path.name}: cannot load ({why})") from e
            self._check_signature(name)
        self.providers = self.sessions["item_scorer"].get_providers()
        self.warm_timings: dict[int, float] = {}  # rows -> seconds of one warm item-scorer run
        if providers == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelError(
                "RANKER_PROVIDERS=cuda but ONNX Runtime runs on "
                f"{self.providers} (CUDA libraries missing?)"
            )
        log.info("loaded %s (%s) on %s", self.version, self.digest[:12], self.providers)

    def _check_signature(self, name: str) -> None:
        s = self.sessions[name]
        spec = self.manifest.graphs[name]
        got = [i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]
        want = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        if got != want:
            raise ModelError(f"{name}.onnx has inputs/outputs {got}, the manifest says {want}")
        widths = {"user_ids": self.contract.width("user"), "item_ids": self.contract.width("item")}
        for i in s.get_inputs():
            if i.name in widths and i.shape[1] != widths[i.name]:
                raise ModelError(
                    f"{name}.onnx input {i.name} is {i.shape[1]} wide, the "
                    f"feature contract says {widths[i.name]}"
                )

    # ---- runs (synchronous; callers keep them off the event loop) ----------------------------
    def user_repr(self, user_ids: np.ndarray, user_weights: np.ndarray) -> np.ndarray:
        (out,) = self.sessions["user_tower"].run(
            ["user_repr"], {"user_ids": user_ids, "user_weights": user_weights}
        )
        return out

    def calibrated(self, raw: Scores) -> Scores:
        """The model's calibrators applied (pctcvr = pctr' * pcvr'); raw when it has none."""
        if not self.calibration:
            return raw
        pctr, pcvr = raw.pctr, raw.pcvr
        if "pctr" in self.calibration:
            pctr = self.calibration["pctr"].apply(pctr)
        if "pcvr" in self.calibration:
            pcvr = self.calibration["pcvr"].apply(pcvr)
        return Scores(pctr, pcvr, pctr * pcvr)

    def score(
        self,
        user_repr: np.ndarray,
        user_index: np.ndarray,
        item_ids: np.ndarray,
        item_weights: np.ndarray,
    ) -> Scores:
        """Calibrated scores (what /rank returns)."""
        return self.calibrated(self.score_raw(user_repr, user_index, item_ids, item_weights))

    def score_raw(
        self,
        user_repr: np.ndarray,
        user_index: np.ndarray,
        item_ids: np.ndarray,
        item_weights: np.ndarray,
    ) -> Scores:
        """The item scorer's own outputs."""
        out = self.sessions["item_scorer"].run(
            OUTPUTS,
            {
                "user_repr": user_repr,
                "user_index": user_index,
                "item_ids": item_ids,
                "item_weights": item_weights,
            },
        )
        return Scores(**dict(zip(OUTPUTS, out, strict=True)))

    def score_full(
        self,
        user_ids: np.ndarray,
        user_weights: np.ndarray,
        item_ids: np.ndarray,
        item_weights: np.ndarray,
    ) -> Scores:
        """The single-graph path (user features tiled per row), calibrated: the naive baseline."""
        out = self.sessions["full"].run(
            OUTPUTS,
            {
                "user_ids": user_ids,
                "user_weights": user_weights,
                "item_ids": item_ids,
                "item_weights": item_weights,
            },
        )
        return self.calibrated(Scores(**dict(zip(OUTPUTS, out, strict=True))))

    def warm(self, batch_sizes: tuple[int, ...] = (1, 64, 512)) -> None:
        """Check the stored sample rows reproduce their exported probabilities (a parity smoke
        test of this build of ONNX Runtime on these graphs), then run the scorer twice per batch
        size so the first requests pay no set-up cost; the second run is timed."""
        s = np.load(self.folder / self.manifest.samples)
        uid, uw = self.contract.hash_side("user", s["user_ids"], s["user_vals"])
        iid, iw = self.contract.hash_side("item", s["item_ids"], s["item_vals"])
        got = self.score_raw(self.user_repr(uid, uw), s["row_user"].astype(np.int64), iid, iw)
        tol = self.manifest.parity.get("tolerance")
        tol = tol if isinstance(tol, dict) else parity.tolerance(self.manifest.kind)
        if not all(parity.close(getattr(got, k), s[k], tol["atol"], tol["rtol"]) for k in OUTPUTS):
            err = max(float(np.abs(getattr(got, k) - s[k]).max()) for k in OUTPUTS)
            raise ModelError(f"{self.version}: sample rows differ from export by {err:.2e}")
        r = self.user_repr(uid[:1], uw[:1])
        for n in sorted(set(batch_sizes)):
            idx = np.arange(n) % len(iid)
            args = (r, np.zeros(n, np.int64), iid[idx], iw[idx])
            self.score(*args)
            t0 = time.perf_counter()
            self.score(*args)
            self.warm_timings[n] = time.perf_counter() - t0


def _providers(choice: str) -> list[str]:
    available = ort.get_available_providers()
    if choice in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        # CUDA and cuDNN installed as wheels (the `gpu` extra) are not on the loader's path:
        # onnxruntime loads them itself when asked to.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
