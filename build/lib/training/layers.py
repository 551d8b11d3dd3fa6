"""The layers every kind of training/model.py is built from: per-field pooling over one
embedding table (trained through embedding_bag, exported as a gather and a masked sum), and
towers whose first layer is split into a user half and an item half."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from features.contract import FeatureContract, Side


class FieldPooling(nn.Module):
    """One embedding table over every field's hashed rows; per-field weighted sum pooling.

    nn.Embedding plus a masked sum, not EmbeddingBag: EmbeddingBag exports to ONNX as a per-row
    loop, tens of times slower. sparse=True keeps an optimiser step proportional to the rows a
    batch touches rather than to the table."""

    def __init__(self, contract: FeatureContract, dim: int):
        super().__init__()
        self.table = nn.Embedding(contract.num_rows, dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.table.weight, std=0.01)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.segments = {side: _segments(contract, side) for side in ("user", "item")}
        self.bag_starts = {
            side: torch.tensor([c.start for _, c in contract.columns(side)])
            for side in ("user", "item")
        }
        self.row_shift = 0  # see restricted()

    def restricted(self, lo: int, hi: int) -> FieldPooling:
        """A copy holding only rows [lo, hi) and the padding row, for a graph whose ids all
        fall there: the user tower never reads item rows, the item scorer never reads user rows,
        so neither exported graph has to carry the whole table."""
        out = copy.deepcopy(self)
        w = self.table.weight.detach()
        rows = w[:hi] if lo <= 1 else torch.cat([w[:1], w[lo:hi]])
        out.table = nn.Embedding.from_pretrained(rows.clone(), freeze=True, padding_idx=0)
        out.row_shift = max(lo - 1, 0)
        return out

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.row_shift:
            ids = torch.where(ids > 0, ids - self.row_shift, ids)  # padding stays row 0
        return self.table(ids)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, side: Side) -> torch.Tensor:
        if self.training:
            return self._bags(ids, weights, side)
        e = self._embed(ids) * weights.unsqueeze(-1)  # (B, L, D)
        parts = []
        for start, stop, single in self.segments[side]:
            chunk = e[:, start:stop]
            # A run of single-valued fields is already pooled: flatten it in one go.
            parts.append(chunk.flatten(1) if single else chunk.sum(1))
        return torch.cat(parts, dim=1)  # (B, n_fields * D)

    def _bags(self, ids: torch.Tensor, weights: torch.Tensor, side: Side) -> torch.Tensor:
        """The same pooling for training, as ONE embedding_bag call per side: every
        (row, field) pair is a bag of the field's columns, padding is skipped in the forward and
        the backward pass, and the table gets one sparse gradient per call instead of one per
        field (accumulating dozens of sparse gradients cost more than the whole forward)."""
        n, width = ids.shape
        starts = self.bag_starts[side]  # (F,) first column of each field
        offsets = (torch.arange(n).unsqueeze(1) * width + starts).reshape(-1)  # (B * F,)
        pooled = F.embedding_bag(
            ids.reshape(-1),
            self.table.weight,
            offsets,
            mode="sum",
            sparse=True,
            per_sample_weights=weights.reshape(-1),
            padding_idx=0,
        )  # (B * F, D)
        return pooled.view(n, -1)  # (B, n_fields * D)


def _segments(contract: FeatureContract, side: Side) -> list[tuple[int, int, bool]]:
    """Column ranges to pool: runs of single-valued fields merged, multi-hot fields alone."""
    out: list[tuple[int, int, bool]] = []
    for f, cols in contract.columns(side):
        single = f.max_len == 1
        if single and out and out[-1][2] and out[-1][1] == cols.start:
            out[-1] = (out[-1][0], cols.stop, True)
        else:
            out.append((cols.start, cols.stop, single))
    return out


class Tower(nn.Module):
    """MLP whose first layer is split into a user half (with the bias) and an item half."""

    def __init__(self, user_in: int, item_in: int, hidden: tuple[int, ...]):
        super().__init__()
        self.user_proj = nn.Linear(user_in, hidden[0])
        self.item_proj = nn.Linear(item_in, hidden[0], bias=False)
        layers: list[nn.Module] = []
        for a, b in zip(hidden, hidden[1:], strict=False):
            layers += [nn.ReLU(), nn.Linear(a, b)]
        layers += [nn.ReLU(), nn.Linear(hidden[-1], 1)]
        self.head = nn.Sequential(*layers)

    def forward(self, user_part: torch.Tensor, item_pooled: torch.Tensor) -> torch.Tensor:
        return self.head(user_part + self.item_proj(item_pooled)).squeeze(-1)  # (B,)


def mixture_head(hidden: tuple[int, ...]) -> nn.Sequential:
    """A task tower over a mixture of experts (already through a ReLU): hidden[1:] then 1."""
    layers: list[nn.Module] = []
    for a, b in zip(hidden, hidden[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(hidden[-1], 1))
    return nn.Sequential(*layers)
