"""A fake engine for the pure serving logic: the Engine's interface, numpy arithmetic instead of
ONNX graphs, and a record of what it was asked to run. Tests of ranking, batching and caching
use it to run in milliseconds; tests that prove parity use the real exported model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from features.contract import ALL_FIELDS, FeatureContract
from service import request
from service.admission import Admission
from service.engine import Scores
from service.ranking import Ranker
from service.served import ModelSlot, ServedModel
from service.user_cache import LocalLRU, UserCache

CONTRACT = FeatureContract.default().fit_buckets({f: 100 for f in ALL_FIELDS})


class FakeEngine:
    """pctr = sigmoid(user repr + mean item row / rows); pcvr the same, shifted. `user_delay_s`
    slows the user tower; `poison` makes the scorer return NaN."""

    def __init__(self, digest: str = "f" * 64, version: str = "fake/v1", repr_dim: int = 4):
        self.version, self.digest, self.repr_dim = version, digest, repr_dim
        self.contract = CONTRACT
        self.providers = ["CPUExecutionProvider"]
        self.warm_timings: dict[int, float] = {}
        self.user_delay_s = 0.0
        self.poison = False
        self.user_runs = 0
        self.batches: list[int] = []
        self.threads: set[int] = set()

    def user_repr(self, uid: np.ndarray, uw: np.ndarray) -> np.ndarray:
        self.user_runs += 1
        time.sleep(self.user_delay_s)
        base = (uid * uw).sum(axis=1, keepdims=True) / self.contract.num_rows
        return np.repeat(base, self.repr_dim, axis=1).astype(np.float32)

    def score(self, reprs, index, iid, iw) -> Scores:
        self.batches.append(len(index))
        self.threads.add(threading.get_ident())
        z = reprs[index, 0] + (iid * iw).mean(axis=1) / self.contract.num_rows - 0.5
        pctr = (1 / (1 + np.exp(-z))).astype(np.float32)
        pcvr = (1 / (1 + np.exp(-(z - 1)))).astype(np.float32)
        if self.poison:
            pcvr[:] = np.nan
        return Scores(pctr, pcvr, pctr * pcvr)


def fake_ranker(
    engine: FakeEngine | None = None,
    max_rows: int = 10_000,
    max_candidates: int = 2000,
    max_batch_rows: int = 2048,
) -> Ranker:
    """A Ranker over a fake engine, as create_app assembles the real one (no HTTP)."""
    engine = engine or FakeEngine()
    onnx = ThreadPoolExecutor(1, thread_name_prefix="onnx")
    cache = UserCache(engine.digest, engine.repr_dim, LocalLRU(100, 60), None)
    model = ServedModel(engine, cache, max_batch_rows, onnx)  # type: ignore[arg-type]
    slot = ModelSlot(model)
    rules = request.Rules(
        max_candidates, request.fusion.FusionParams("product", 1, 1, 0), -4, 4, 1000
    )
    return Ranker(slot, Admission(max_rows), rules, ThreadPoolExecutor(2))
