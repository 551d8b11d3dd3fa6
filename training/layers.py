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

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The table's rows of `ids` (B, L) -> (B, L, D), unpooled."""
        if self.row_shift:
            ids = torch.where(ids > 0, ids - self.row_shift, ids)  # padding stays row 0
        return self.table(ids)

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


class Interaction(nn.Module):
    """Explicit user x item terms for the towers, split like the towers: `user_part` once per
    user (cached with the user representation, `user_width` floats), then per candidate row
    `forward(users' parts (U, user_width), user_index (B,), item's pooled fields)` -> (B, width)
    features the towers' first layers read beside the item's embeddings, batch-normalised: raw,
    they are products of embeddings near 0.01 or fractions of a list, too small for the first
    layer to learn from in an epoch."""

    user_width: int
    width: int

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.norm = nn.BatchNorm1d(width)

    def user_part(
        self, pool: FieldPooling, ids: torch.Tensor, w: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def features(
        self, users: torch.Tensor, user_index: torch.Tensor, item_pooled: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, users: torch.Tensor, user_index: torch.Tensor, item_pooled: torch.Tensor
    ) -> torch.Tensor:
        return self.norm(self.features(users, user_index, item_pooled))


class FieldDots(Interaction):
    """Every user field's pooled vector dotted with every item field's, per row: (B, Fu * D)
    and (B, Fi * D) -> (B, Fu * Fi). The explicit second-order user x item terms of a
    factorisation machine, which an MLP over the concatenation learns only slowly."""

    def __init__(self, contract: FeatureContract, dim: int):
        self.user_fields = len(contract.side_fields("user"))
        self.item_fields = len(contract.side_fields("item"))
        super().__init__(self.user_fields * self.item_fields)
        self.user_width = self.user_fields * dim

    def user_part(self, pool, ids, w, pooled):
        return pooled

    def features(self, users, user_index, item_pooled):
        u = users.index_select(0, user_index).unflatten(1, (self.user_fields, -1))  # (B, Fu, D)
        x = item_pooled.unflatten(1, (self.item_fields, -1))  # (B, Fi, D)
        return torch.bmm(u, x.transpose(1, 2)).flatten(1)


class TargetAttention(Interaction):
    """Each candidate's field against the `k` heaviest members of the user's list that shares
    its embedding table (a spec's `embedding:` groups: recent categories and the item's
    category, recent brands and its brand...): per such (list, item field) pair, the weighted
    sum over the members of sigmoid(scale * cos(member, item) + shift), a soft "is this item's
    category among the user's, and how much", which pooling the list into one vector loses.
    A shared row is the same vector, cosine 1, so the match is there from the first step;
    fields of different tables would have to learn to align, which they do not (measured:
    docs/model-evidence.md), so only shared pairs are read. The user part is the members'
    unit vectors and weights, k * (D + 1) floats a list, taken by distinct keys
    (_heaviest_first), so training, export and serving pick the same members."""

    def __init__(self, contract: FeatureContract, dim: int, k: int):
        item = contract.side_fields("item")
        lists, pairs = [], []
        for f, cols in contract.columns("user"):
            partners = [g for g, it in enumerate(item) if f.embedding and it.table == f.table]
            if f.max_len > 1 and partners:
                if f.max_len > 4096:
                    raise ValueError(f"target attention reads lists of 4096 at most, not {f.name}")
                pairs += [(len(lists), g) for g in partners]
                lists.append((cols.start, cols.stop, min(k, f.max_len)))
        if not pairs:
            raise ValueError(
                "target attention needs a user list and an item field in one embedding group "
                "(a spec's `embedding:` key); this contract has none"
            )
        super().__init__(len(pairs))
        self.item_fields, self.lists, self.pairs, self.dim = len(item), lists, pairs, dim
        # where each list's members (k * D) and weights (k) start in the user part
        self.starts = [sum(k * (dim + 1) for _, _, k in lists[:i]) for i in range(len(lists))]
        self.user_width = sum(k * (dim + 1) for _, _, k in lists)
        # a match is a cosine near 1: sharp from the start, so that equal ids (cosine 1) count
        # and others (about 0 +- 1/sqrt(D)) do not
        self.scale = nn.Parameter(torch.full((len(pairs),), 10.0))
        self.shift = nn.Parameter(torch.full((len(pairs),), -8.0))

    def user_part(self, pool, ids, w, pooled):
        parts = []
        for start, stop, k in self.lists:
            top = torch.topk(_heaviest_first(w[:, start:stop]), k, dim=1).indices
            emb = F.normalize(pool.embed(torch.gather(ids[:, start:stop], 1, top)), dim=-1)
            parts += [emb.flatten(1), torch.gather(w[:, start:stop], 1, top)]  # padding: 0
        return torch.cat(parts, dim=1)

    def features(self, users, user_index, item_pooled):
        x = F.normalize(item_pooled.unflatten(1, (self.item_fields, -1)), dim=-1)  # (B, Fi, D)
        out = []
        for p, (i, g) in enumerate(self.pairs):
            k, pos = self.lists[i][2], self.starts[i]
            members = users[:, pos : pos + k * self.dim]  # (U, k * D)
            weight = users[:, pos + k * self.dim : pos + k * (self.dim + 1)]  # (U, k)
            cos = _cosines(members, user_index, x[:, g], k, self.training)  # (B, k)
            match = torch.sigmoid(cos * self.scale[p] + self.shift[p])
            out.append((match * weight.index_select(0, user_index)).sum(1, keepdim=True))
        return torch.cat(out, dim=1)


def _cosines(
    members: torch.Tensor, user_index: torch.Tensor, x: torch.Tensor, k: int, per_row: bool
) -> torch.Tensor:
    """(U, k * D) unit members, (B,) rows' users, (B, D) unit item vectors -> (B, k): each
    row's item against its own user's members. Training gathers the members per row (a batch
    holds many users); the exported graph multiplies every row by every user's members and
    keeps its own (a request holds one user, a batch of them few), which spares a copy of
    k * D floats a row."""
    if per_row:
        rows = members.index_select(0, user_index).unflatten(1, (k, -1))  # (B, k, D)
        return (rows * x.unsqueeze(1)).sum(-1)
    every = x @ members.unflatten(1, (k, -1)).flatten(0, 1).T  # (B, U * k)
    pick = user_index.unsqueeze(1) * k + torch.arange(k, dtype=user_index.dtype)  # (B, k)
    return torch.gather(every, 1, pick)


def _heaviest_first(w: torch.Tensor) -> torch.Tensor:
    """(U, L) weights -> int64 keys with no two alike: the weight to 2^-20 (clamped to
    [0, 2^40)), then the earlier column first. Top-k of distinct keys is one set whatever the
    algorithm, so PyTorch and ONNX Runtime (whose TopK has no stable variant to export to)
    pick the same members."""
    q = torch.round(w.clamp(0.0, 2.0**20) * 2.0**20).to(torch.int64)
    col = torch.arange(w.shape[1], dtype=torch.int64)
    return q * 4096 + (4095 - col)


class LogisticRegression(nn.Module):
    """A sparse logistic regression per head over every hashed feature: one weight per
    embedding row and head, a bias per head. Split like the towers: `side_sum` of the user side
    once per user, `score` taking it onto the candidate rows with the item side's. The
    references (training/reference.py) are one-head ones; a wide term holds one a tower."""

    def __init__(self, contract: FeatureContract, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.weights = FieldPooling(contract, heads)
        nn.init.zeros_(self.weights.table.weight)
        self.bias = nn.Parameter(torch.zeros(heads))

    def side_sum(self, ids: torch.Tensor, w: torch.Tensor, side: Side) -> torch.Tensor:
        """(N, columns) one side's features -> (N, heads) the sum of their weights."""
        pooled = self.weights(ids, w, side)  # (N, fields * heads)
        return pooled.unflatten(1, (-1, self.heads)).sum(1)

    def score(
        self, users: torch.Tensor, user_index: torch.Tensor, ids: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """(U, heads) users' sums, (B,) rows' users, the rows' item features -> (B, heads)."""
        return users.index_select(0, user_index) + self.side_sum(ids, w, "item") + self.bias

    def forward(
        self,
        user_ids: torch.Tensor,
        user_w: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
    ) -> torch.Tensor:
        users = self.side_sum(user_ids, user_w, "user")
        return self.score(users, user_index, item_ids, item_w)  # (B, heads)


class Wide(nn.Module):
    """The wide part of a wide & deep model: a fitted logistic regression a head
    (`regression`, held fixed) blended with the towers' logits (training/wide.py). Each head's
    logit is `a * tower + b * regression + c`, (a, b, c) = `blend[:, head]`, (1, 0, 0) until it
    is fitted: the towers train as they would alone. The regression's user-side sums (`heads`
    floats) are cached with the user representation."""

    def __init__(self, contract: FeatureContract, heads: int):
        super().__init__()
        self.regression = LogisticRegression(contract, heads).requires_grad_(False)
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
