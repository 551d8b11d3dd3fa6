"""The layers every kind of training/model.py is built from: per-field pooling over one
embedding table (trained through embedding_bag, exported as a gather and a masked sum), towers
whose first layer is split into a user half and an item half, and the logistic regression the
references and a wide term are. The towers' user x item interactions: training/interactions.py."""

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

    def _local(self, ids: torch.Tensor) -> torch.Tensor:
        """Contract rows -> this table's rows (a restricted copy's are shifted)."""
        if self.row_shift:
            ids = torch.where(ids > 0, ids - self.row_shift, ids)  # padding stays row 0
        return ids

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The table's rows of `ids` (B, L) -> (B, L, D), unpooled."""
        return self.table(self._local(ids))

    def total(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and weights -> (N, D): every column's row, weighted, summed over all the
        columns (what a regression reads: the sum of its pooled fields). For narrow tables
        (a regression's one row a head): per table column one gather of single floats, which
        exports to GatherElements; ONNX Runtime's Gather copies row by row (the sum over 500
        rows of 20 columns, two floats a row, one thread: 37 against 288 us)."""
        flat = self._local(ids).reshape(1, -1)
        table = self.table.weight.T  # (D, rows)
        cols = [
            torch.gather(table[d : d + 1], 1, flat).reshape(ids.shape) for d in range(len(table))
        ]
        return torch.stack([(c * weights).sum(1) for c in cols], dim=1)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, side: Side) -> torch.Tensor:
        if self.training:
            return self._bags(ids, weights, side)
        e = self.embed(ids) * weights.unsqueeze(-1)  # (B, L, D)
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


class LogisticRegression(nn.Module):
    """A sparse logistic regression per head over every hashed feature: one weight per
    embedding row and head, a bias per head. Split like the towers: `side_sum` of the user side
    once per user, `score` taking it onto the candidate rows with the item side's. The
    references (training/reference.py) are one-head ones; a wide term holds one a tower."""

    def __init__(self, contract: FeatureContract, heads: int = 1, dense: int = 0):
        super().__init__()
        self.heads = heads
        self.weights = FieldPooling(contract, heads)
        nn.init.zeros_(self.weights.table.weight)
        self.bias = nn.Parameter(torch.zeros(heads))
        # `dense` row-level inputs beside the hashed features (a wide term's exact matches,
        # MatchCounts' features), one weight each and head
        self.dense = nn.Parameter(torch.zeros(dense, heads)) if dense else None

    def side_sum(self, ids: torch.Tensor, w: torch.Tensor, side: Side) -> torch.Tensor:
        """(N, columns) one side's features -> (N, heads) the sum of their weights: pooled per
        field in training (one embedding_bag and its sparse gradient), summed over every
        column at once otherwise (the graphs' form)."""
        if not self.training:
            return self.weights.total(ids, w)
        pooled = self.weights(ids, w, side)  # (N, fields * heads)
        return pooled.unflatten(1, (-1, self.heads)).sum(1)

    def score(
        self,
        users: torch.Tensor,
        user_index: torch.Tensor,
        ids: torch.Tensor,
        w: torch.Tensor,
        dense: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(U, heads) users' sums, (B,) rows' users, the rows' item features (and with
        `self.dense`, their (B, dense) inputs) -> (B, heads)."""
        out = users.index_select(0, user_index) + self.side_sum(ids, w, "item") + self.bias
        if self.dense is not None:
            if dense is None:
                raise ValueError("this regression reads dense inputs; none were given")
            out = out + dense @ self.dense
        return out

    def forward(
        self,
        user_ids: torch.Tensor,
        user_w: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
        dense: torch.Tensor | None = None,
    ) -> torch.Tensor:
        users = self.side_sum(user_ids, user_w, "user")
        return self.score(users, user_index, item_ids, item_w, dense)  # (B, heads)


class Wide(nn.Module):
    """The wide part of a wide & deep model: a fitted logistic regression a head
    (`regression`, held fixed) blended with the towers' logits (training/wide.py). Each head's
    logit is `a * tower + b * regression + c`, (a, b, c) = `blend[:, head]`, (1, 0, 0) until it
    is fitted: the towers train as they would alone. The regression's user-side sums (`heads`
    floats) are cached with the user representation."""

    def __init__(self, contract: FeatureContract, heads: int, dense: int = 0):
        super().__init__()
        self.regression = LogisticRegression(contract, heads, dense).requires_grad_(False)
        blend = torch.zeros(3, heads)
        blend[0] = 1.0
        self.blend = nn.Parameter(blend, requires_grad=False)

    @property
    def heads(self) -> int:
        return self.regression.heads

    @property
    def fitted(self) -> bool:
        """Whether the blend reads the regression at all: until training/wide.py fits it (the
        towers' training), it is (1, 0, 0) and the regression's sums are work for nothing. Read
        in training only (TwoTowers._reads_wide)."""
        return bool(self.blend[1:].any() or (self.blend[0] != 1).any())

    def mix(self, towers: torch.Tensor, regressions: torch.Tensor) -> torch.Tensor:
        """(B, heads) towers' logits and the regressions' -> (B, heads) blended logits."""
        a, b, c = self.blend
        return a * towers + b * regressions + c


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
