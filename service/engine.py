"""ONNX Runtime sessions of one exported model: numpy in, numpy out, synchronous.

The engine knows nothing of HTTP, caching or batching. It loads a model version folder, checks
the manifest against the graphs it finds (names, shapes, dtypes) and refuses a mismatch with a
message that names it, and reports the providers that really run: onnxruntime-gpu silently
falls back to the CPU when CUDA libraries are missing, so the requested list proves nothing.

How the item scorer runs is `ScorerOptions` (RANKER_IO_BINDING, RANKER_CUDA_GRAPH,
RANKER_MAX_BATCH_ROWS): plainly, through I/O binding or as CUDA graphs (service/scorers.py).
Each is checked against the plain run on the stored sample rows when the model is warmed, and
one that fails is turned off with a log line saying why: an option never costs a start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from features import manifest, parity
from features.calibration import Calibrator
from features.manifest import OUTPUTS
from service.model_folder import ModelError
from service.scorers import (
    MAX_BOUND_ROWS,
    BoundScorer,
    GraphScorer,
    bucket_users,
    cuda_graph_providers,
)

log = logging.getLogger("service.engine")


@dataclass(frozen=True)
class Scores:
    pctr: np.ndarray
    pcvr: np.ndarray
    pctcvr: np.ndarray


@dataclass(frozen=True)
class ScorerOptions:
    """How the item scorer runs (the settings are documented in service/config.py)."""

    io_binding: Literal["auto", "on", "off"] = "auto"  # auto: on when CUDA runs
    cuda_graph: bool = False  # CUDA only; needs I/O binding
    max_rows: int = 2048  # warm-up prepares buffers and graphs for runs up to this many rows


class Engine:
    def __init__(
        self,
        folder: Path,
        providers: str = "auto",
        intra_op_threads: int = 1,
        scorer: ScorerOptions = ScorerOptions(),
    ):
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
        self._opts, self._wanted = opts, _providers(providers)
        self.sessions = {name: self._session(name, self._wanted) for name in manifest.GRAPHS}
        for name in manifest.GRAPHS:
            self._check_signature(name)
        self.providers = self.sessions["item_scorer"].get_providers()
        self.warm_timings: dict[int, float] = {}  # rows -> seconds of one warm item-scorer run
        if providers == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelError(
                "RANKER_PROVIDERS=cuda but ONNX Runtime runs on "
                f"{self.providers}: no GPU visible to this process, or the CUDA libraries did "
                "not load (ONNX Runtime logged which above)"
            )
        self.options = scorer
        cuda = self.providers[0] == "CUDAExecutionProvider"
        bind = scorer.io_binding == "on" or (scorer.io_binding == "auto" and cuda)
        self._bound = BoundScorer(self.sessions["item_scorer"], cuda) if bind else None
        self._graphs: GraphScorer | None = None
        if scorer.cuda_graph and not (cuda and bind):
            log.warning("CUDA graphs need CUDA and I/O binding: the item scorer runs without them")
        elif scorer.cuda_graph:
            try:  # a second session of the item scorer, for the runs that fit a bucket
                self._graphs = GraphScorer(
                    self._session("item_scorer", cuda_graph_providers(self._wanted)),
                    self._bound.pin,
                )
            except ModelError as e:
                log.warning("CUDA graphs off: %s", e)
        log.info(
            "loaded %s (%s) on %s; item scorer: %s",
            self.version,
            self.digest[:12],
            self.providers,
            self.scorer_mode,
        )

    @classmethod
    def from_settings(cls, folder: Path, s) -> Engine:
        """The engine as the service runs it: `s` is service.config.Settings."""
        options = ScorerOptions(s.io_binding, s.cuda_graph, s.max_batch_rows)
        return cls(folder, s.providers, s.intra_op_threads, options)

    def _session(self, name: str, providers: list) -> ort.InferenceSession:
        path = self.folder / self.manifest.graphs[name].file
        try:
            return ort.InferenceSession(str(path), self._opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            why = str(e).replace(str(self.folder.resolve()), self.folder.name)
            raise ModelError(f"{path.name}: cannot load ({why})") from e

    @property
    def scorer_mode(self) -> str:
        """How the item scorer runs, in words (logged at load, reported by the GPU check)."""
        if self._bound is None:
            return "plain runs"
        mode = "I/O binding" + (", page-locked buffers" if self._bound.pin.works else "")
        if self._graphs is not None:
            g = self._graphs
            mode += f", CUDA graphs ({len(g.graphs)} buckets captured, up to {g.max_rows} rows)"
        return mode

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
        """The item scorer's own outputs: a captured graph when one fits the run, else the bound
        run when I/O binding is on, else a plain run."""
        args = (user_repr, user_index, item_ids, item_weights)
        out = None
        if self._graphs is not None:
            try:
                out = self._graphs.run(*args)
            except Exception:  # a bucket captured during serving failed: never fail the run
                log.exception("CUDA graphs off: a graph run failed")
                self._graphs = None
        if out is None and self._bound is not None:
            out = self._bound.run(*args)
        if out is None:
            out = self._plain(*args)
        return Scores(**dict(zip(OUTPUTS, out, strict=True)))

    def _plain(self, user_repr, user_index, item_ids, item_weights) -> list[np.ndarray]:
        return self.sessions["item_scorer"].run(
            OUTPUTS,
            {
                "user_repr": user_repr,
                "user_index": user_index,
                "item_ids": item_ids,
                "item_weights": item_weights,
            },
        )

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
        size so the first requests pay no set-up cost; the second run is timed. The bound run and
        the CUDA graphs are first checked against the plain run on the same rows (and each graph
        bucket captured up to `ScorerOptions.max_rows`); one that differs or fails is turned off."""
        s = np.load(self.folder / self.manifest.samples)
        uid, uw = self.contract.hash_side("user", s["user_ids"], s["user_vals"])
        iid, iw = self.contract.hash_side("item", s["item_ids"], s["item_vals"])
        case = (self.user_repr(uid, uw), s["row_user"].astype(np.int64), iid, iw)
        self._check_options(case)
        got = self.score_raw(*case)
        tol = self.manifest.parity.get("tolerance")
        tol = tol if isinstance(tol, dict) else parity.tolerance(self.manifest.kind)
        if not all(parity.close(getattr(got, k), s[k], tol["atol"], tol["rtol"]) for k in OUTPUTS):
            err = max(float(np.abs(getattr(got, k) - s[k]).max()) for k in OUTPUTS)
            raise ModelError(f"{self.version}: sample rows differ from export by {err:.2e}")
        r = self.user_repr(uid[:1], uw[:1])
        if self._bound is not None:  # the buffers, allocated before traffic
            self._bound.reserve(min(self.options.max_rows, MAX_BOUND_ROWS), len(case[0]))
        for n in sorted(set(batch_sizes)):
            idx = np.arange(n) % len(iid)
            args = (r, np.zeros(n, np.int64), iid[idx], iw[idx])
            self.score(*args)
            t0 = time.perf_counter()
            self.score(*args)
            self.warm_timings[n] = time.perf_counter() - t0
        log.info("%s warm; item scorer: %s", self.version, self.scorer_mode)

    def _check_options(self, case: tuple) -> None:
        """The bound run and every CUDA graph bucket score the sample rows (tiled to the bucket)
        as the plain run does, or are turned off. The plain run is the reference: with CUDA the
        same kernels run in each, so anything but equal scores means the option is broken."""
        ref = self._plain(*case)
        if self._bound is not None:
            why = _differs(lambda: self._bound.run(*case), ref)
            if why:
                log.warning("I/O binding off: %s", why)
                self._bound = self._graphs = None
        if self._graphs is None:
            return
        user_repr, index, iid, iw = case
        for rows in self._graphs.buckets(self.options.max_rows):
            pick = np.arange(rows) % len(iid)
            users = min(len(user_repr), bucket_users(rows))
            tiled = (user_repr[:users], index[pick] % users, iid[pick], iw[pick])
            ref = self._plain(*tiled)
            # ONNX Runtime runs a graph id plainly first, captures it on a later run and replays
            # it after: the replays are what serving gets, so three runs are checked
            for _ in range(3):
                why = _differs(lambda t=tiled: self._graphs.run(*t), ref)
                if why:
                    log.warning("CUDA graphs off (%d-row bucket): %s", rows, why)
                    self._graphs = None
                    return


def _differs(run, ref: list[np.ndarray]) -> str | None:
    """Why `run()`'s scores are not `ref`, or None when they are the same."""
    try:
        got = run()
    except Exception as e:  # onnxruntime raises its own untyped errors
        return f"{type(e).__name__}: {e}"
    if got is None:
        return "the run did not fit (it should have)"
    err = max(float(np.abs(g - r).max(initial=0.0)) for g, r in zip(got, ref, strict=True))
    # a tenth of the export's parity: on the CPU the runs are equal, on CUDA a library may pick
    # another GEMM algorithm for a graph's workspace, a few float32 ulps apart
    return None if err <= parity.ATOL / 10 else f"scores differ from the plain run by {err:.2e}"


def _providers(choice: str) -> list:
    available = ort.get_available_providers()
    if choice in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        # CUDA and cuDNN installed as wheels (the `gpu` extra) are not on the loader's path:
        # onnxruntime loads them itself when asked to.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        # TF32 off: ONNX Runtime turns it on by default on Ampere and later, where it rounds
        # GEMM inputs to 10 bits of mantissa; the export's parity (1e-5) holds only without it,
        # and GEMMs this small gain nothing from it (gpu/parity.py measures both).
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), ("CPUExecutionProvider", {})]
    return [("CPUExecutionProvider", {})]
