"""Training in several processes: what train.py needs to run under torchrun, and nothing else.

    torchrun --nproc-per-node N -m training.train --data DIR --out RUN ...

Without torchrun's environment (RANK / WORLD_SIZE unset) `init()` returns `LOCAL`, one process,
and every helper here is the identity: a single-process run takes no collective and gives the
same results as before this module existed.

Under torchrun the model is wrapped in DistributedDataParallel over gloo. Gloo because the trainer
keeps its tensors on the CPU: NCCL only reduces CUDA tensors, and its sparse all-reduce is a
prototype. The embedding tables' gradients are sparse (embedding_bag with sparse=True); DDP
finds them through the nn.Embedding(sparse=True) that owns the table, gives each its own bucket,
and gloo reduces it as an all-gather of indices and values that every rank sums in the same
order, so the ranks' tables stay bit-identical (tests/training/test_distributed.py checks the
digests). SparseAdam's state starts empty on every rank and sees the same gradients, so it stays
identical without being broadcast.

Sharding: every rank draws the same session order (same seed), cuts it into one contiguous part
per rank at session boundaries (a session's rows stay together, parts differ by at most one
session), and splits its part into exactly ceil(rows / batch_size) batches, the number a single
process takes. Every rank therefore takes the same number of steps, no row is dropped, and
`--batch-size` stays the rows of ONE step across all ranks: each rank's batch is about
batch_size / N rows, DDP averages the ranks' mean losses, so the learning rates need no
rescaling for N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.encoded import EncodedSplit

BACKEND = "gloo"  # the trainer's tensors live on the CPU (see the module docstring)


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The rank that validates, evaluates and writes the run folder."""
        return self.rank == 0


LOCAL = World()


def init() -> World:
    """Join torchrun's process group when its environment is there; `LOCAL` otherwise.

    Ranks other than 0 log warnings only: one process reports the run."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return LOCAL
    dist.init_process_group(BACKEND)
    world = World(dist.get_rank(), dist.get_world_size())
    if not world.main:
        logging.getLogger("training").setLevel(logging.WARNING)
    return world


def close(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the body, then the others: the first reads the data and fills the encoded
    cache, the rest read the cache instead of racing to write it."""
    if not world.main:
        dist.barrier()
    yield
    if world.main and world.size > 1:
        dist.barrier()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The module a training step calls: DDP over `model` (which broadcasts rank 0's weights)
    or `model` itself."""
    return model if world.size == 1 else DistributedDataParallel(model)


def same_buffers(world: World, model: nn.Module) -> None:
    """Rank 0's buffers (batch normalisation's running statistics) onto every rank. DDP
    broadcasts them before each forward, so every step trains with rank 0's, but the last
    step's update is each rank's own, from its own shard: without this, the ranks would end an
    epoch, and keep its state, with statistics that differ."""
    if world.size == 1:
        return
    for b in model.buffers():
        dist.broadcast(b, src=0)


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside `wrap`'s result: its loss and eval passes need no collective."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def shard(
    world: World, split: EncodedSplit, order: np.ndarray, batch_size: int
) -> list[np.ndarray]:
    """This rank's batches (row indices) of one epoch's session `order`; one process gets
    `order` cut every `batch_size` rows, as `iter_batches` cuts it."""
    if world.size == 1:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    steps = -(-len(order) // batch_size)
    sessions = np.asarray(split.sessions)[order]
    starts = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1]])  # each session's first
    targets = np.arange(1, world.size) * len(order) / world.size
    cuts = np.r_[0, starts[np.minimum(np.searchsorted(starts, targets), len(starts) - 1)]]
    cuts = np.r_[cuts, len(order)]
    if np.diff(cuts).min() < steps:  # checked on every rank's parts: all ranks stop alike
        raise SystemExit(
            f"a rank got {np.diff(cuts).min()} rows for {steps} steps: too few sessions for "
            f"{world.size} processes; use fewer processes or a larger --batch-size"
        )
    return np.array_split(order[cuts[world.rank] : cuts[world.rank + 1]], steps)


def total(world: World, *values: float) -> tuple[float, ...]:
    """`values` summed over the ranks (float64, so row counts stay exact)."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(t.tolist())


def from_main(world: World, value: float) -> float:
    """Rank 0's `value` on every rank: decisions taken from rank 0's validation are then the
    same everywhere."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


def digest(model: nn.Module) -> str:
    """sha256 of every tensor of the state dict, in order: equal only for identical weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def digests(world: World, model: nn.Module) -> list[str]:
    """Every rank's `digest`, by rank (a collective: every rank calls it)."""
    mine = digest(model)
    if world.size == 1:
        return [mine]
    out: list[str] = [""] * world.size
    dist.all_gather_object(out, mine)
    return out
