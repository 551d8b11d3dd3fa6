"""How the item scorer runs, past a plain `session.run`: through I/O binding (`BoundScorer`), and as
CUDA graphs captured per bucket of rows (`GraphScorer`). The engine picks one by its
`ScorerOptions` and checks each against the plain run when it warms.

With I/O binding a run copies its rows into host buffers allocated once (page-locked when CUDA
runs, so the copy to the GPU is DMA) and ONNX Runtime writes the scores into output buffers
allocated once: no allocation per run, and on CUDA no staging copy through pageable memory. With
CUDA graphs, a run pads its rows to a power-of-two bucket and replays the graph captured for that
bucket on fixed device buffers: one launch instead of one per kernel.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref

import numpy as np
import onnxruntime as ort

from features.manifest import OUTPUTS

log = logging.getLogger("service.engine")


MIN_BUCKET = 64  # a CUDA graph run pads its rows to a power of two, at least this
MAX_GRAPH_ROWS = 1 << 16  # runs larger than the largest bucket skip the graphs
MAX_BOUND_ROWS = 1 << 18  # and those larger than this the buffers (`ranker predict`'s chunks)


def bucket(rows: int) -> int:
    """The row count a CUDA graph run of `rows` rows is padded to."""
    return max(MIN_BUCKET, 1 << (rows - 1).bit_length())


def bucket_users(rows: int) -> int:
    """User rows a bucket's graph holds: a request brings many candidates, so a sixty-fourth of
    the rows (at least 64); a run with more users takes the bound run instead. The user rows are
    copied whole on every replay, so holding as many as the rows would double the copy."""
    return max(64, rows // 64)


class PageLock:
    """Zeroed numpy buffers, page-locked through the CUDA runtime ONNX Runtime's CUDA provider
    loaded (cudaHostRegister), so copies between them and the GPU are DMA, not staged through a
    driver buffer. `works` is False where there is no CUDA runtime in the process (the CPU
    provider): buffers are then ordinary memory."""

    PAGE = 4096

    def __init__(self, cuda: bool):
        self.lib = None
        if cuda:
            try:
                with open("/proc/self/maps") as maps:
                    path = next((ln.split()[-1] for ln in maps if "/libcudart.so" in ln), None)
                self.lib = ctypes.CDLL(path) if path else None
            except OSError as e:
                log.warning("host buffers not page-locked: %s", e)
        self.works = self.lib is not None

    def zeros(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        if self.lib is None:
            return np.zeros(shape, dtype)
        # whole pages of its own: pages are what get locked, and a page two buffers shared
        # could not be registered twice
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = -(-nbytes // self.PAGE) * self.PAGE
        raw = np.zeros(size + self.PAGE, np.uint8)
        start = -raw.ctypes.data % self.PAGE
        arr = raw[start : start + nbytes].view(dtype).reshape(shape)
        ptr = ctypes.c_void_p(arr.ctypes.data)
        rc = self.lib.cudaHostRegister(ptr, ctypes.c_size_t(size), ctypes.c_uint(0))
        if rc != 0:
            log.warning("cudaHostRegister failed (%d): host buffers not page-locked", rc)
            self.lib, self.works = None, False
            return arr
        done = weakref.finalize(arr, self.lib.cudaHostUnregister, ptr)
        done.atexit = False  # at exit the CUDA runtime may be gone before it
        return arr


class Buffers:
    """The item scorer's inputs and outputs for up to `rows` rows and `users` user rows, allocated
    once (and page-locked by `pin`). Unused rows hold zeros or an earlier run's rows: valid input
    either way, and their scores are never read."""

    def __init__(self, rows: int, users: int, repr_dim: int, width: int, pin: PageLock):
        self.rows, self.users = rows, users
        self.user_repr = pin.zeros((users, repr_dim), np.float32)
        self.user_index = pin.zeros((rows,), np.int64)
        self.item_ids = pin.zeros((rows, width), np.int64)
        self.item_weights = pin.zeros((rows, width), np.float32)
        self.out = {k: pin.zeros((rows,), np.float32) for k in OUTPUTS}

    def fill(self, user_repr, user_index, item_ids, item_weights) -> None:
        n, u = len(user_index), len(user_repr)
        self.user_repr[:u] = user_repr
        self.user_index[:n] = user_index
        self.item_ids[:n] = item_ids
        self.item_weights[:n] = item_weights

    def inputs(self) -> dict[str, np.ndarray]:
        return {
            "user_repr": self.user_repr,
            "user_index": self.user_index,
            "item_ids": self.item_ids,
            "item_weights": self.item_weights,
        }


def _widths(session: ort.InferenceSession) -> tuple[int, int]:
    shapes = {i.name: i.shape for i in session.get_inputs()}
    return int(shapes["user_repr"][1]), int(shapes["item_ids"][1])


class BoundScorer:
    """The item scorer through I/O binding: rows copied into the buffers, the prefix the run
    needs bound with its exact shape (no padding: scores equal the plain run's), ONNX Runtime
    writing the scores into the output buffers. The buffers grow to the largest run seen (to a
    power of two, up to MAX_BOUND_ROWS); one lock, so a run never overwrites another's rows."""

    def __init__(self, session: ort.InferenceSession, cuda: bool):
        self.session, self.pin = session, PageLock(cuda)
        self.repr_dim, self.width = _widths(session)
        self.binding = session.io_binding()
        self.buf: Buffers | None = None
        self.lock = threading.Lock()

    def reserve(self, rows: int, users: int) -> Buffers:
        b = self.buf
        if b is None or rows > b.rows or users > b.users:
            rows = max(rows, b.rows if b else 0)
            users = max(users, b.users if b else 0)
            p2 = 1 << (rows - 1).bit_length(), 1 << (users - 1).bit_length()
            self.buf = b = Buffers(*p2, self.repr_dim, self.width, self.pin)
        return b

    def run(self, user_repr, user_index, item_ids, item_weights) -> list[np.ndarray] | None:
        n, u = len(user_index), len(user_repr)
        if n == 0 or n > MAX_BOUND_ROWS or u > MAX_BOUND_ROWS:
            return None
        with self.lock:
            b = self.reserve(n, u)
            b.fill(user_repr, user_index, item_ids, item_weights)
            io = self.binding
            for name, arr in b.inputs().items():
                rows = u if name == "user_repr" else n
                shape = (rows, *arr.shape[1:])
                io.bind_input(name, "cpu", 0, arr.dtype.type, shape, arr.ctypes.data)
            for name, arr in b.out.items():
                io.bind_output(name, "cpu", 0, np.float32, (n,), arr.ctypes.data)
            self.session.run_with_iobinding(io)
            return [b.out[k][:n].copy() for k in OUTPUTS]


class Graph:
    """One bucket's captured graph: device buffers bound once, updated in place from the host
    buffers before each replay (whole: ONNX Runtime copies an OrtValue whole)."""

    def __init__(self, session, gid: int, rows: int, widths: tuple[int, int], pin, device: str):
        self.session, self.rows, self.users = session, rows, bucket_users(rows)
        self.host = Buffers(rows, self.users, *widths, pin)
        self.device = {
            k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in self.host.inputs().items()
        }
        self.scores = {
            k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in self.host.out.items()
        }
        self.binding = session.io_binding()
        for k, v in self.device.items():
            self.binding.bind_ortvalue_input(k, v)
        for k, v in self.scores.items():
            self.binding.bind_ortvalue_output(k, v)
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(gid))

    def run(self, user_repr, user_index, item_ids, item_weights) -> list[np.ndarray]:
        n = len(user_index)
        self.host.fill(user_repr, user_index, item_ids, item_weights)
        for k, v in self.host.inputs().items():
            self.device[k].update_inplace(v)
        self.session.run_with_iobinding(self.binding, self.run_options)
        return [self.scores[k].numpy()[:n] for k in OUTPUTS]


class GraphScorer:
    """The item scorer as CUDA graphs, one per bucket (a graph id each), on a session of its own
    made with `enable_cuda_graph`. A bucket is captured on its first run (warm-up runs every
    bucket up to the configured rows; a larger run captures its own the first time). `device`
    is "cuda"; "cpu" runs the same bookkeeping (buckets, padding, fixed buffers) without a GPU,
    which is how the tests prove it."""

    def __init__(self, session: ort.InferenceSession, pin: PageLock, device: str = "cuda"):
        self.session, self.pin, self.device = session, pin, device
        self.widths = _widths(session)
        self.graphs: dict[int, Graph] = {}
        self.max_rows = 0  # the largest bucket captured
        self.lock = threading.Lock()

    @staticmethod
    def buckets(max_rows: int) -> list[int]:
        top = bucket(min(max_rows, MAX_GRAPH_ROWS))
        return [b for b in (MIN_BUCKET << i for i in range(16)) if b <= top]

    def run(self, user_repr, user_index, item_ids, item_weights) -> list[np.ndarray] | None:
        n = len(user_index)
        if n == 0 or n > MAX_GRAPH_ROWS or len(user_repr) > bucket_users(bucket(n)):
            return None
        rows = bucket(n)
        with self.lock:
            g = self.graphs.get(rows)
            if g is None:
                g = self.graphs[rows] = Graph(
                    self.session, len(self.graphs), rows, self.widths, self.pin, self.device
                )
                self.max_rows = max(self.max_rows, rows)
            return g.run(user_repr, user_index, item_ids, item_weights)


def cuda_graph_providers(providers: list) -> list:
    """The providers with CUDA graph capture turned on for the CUDA provider."""
    return [
        (p[0], {**p[1], "enable_cuda_graph": "1"}) if p[0] == "CUDAExecutionProvider" else p
        for p in providers
    ]
