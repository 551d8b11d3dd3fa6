"""The towers' explicit user x item interactions (ModelConfig.interactions), split like the
towers: a user part computed once per user and cached with the user representation, and
features per candidate row computed in the item scorer from it and the candidate's embeddings
or ids. Field dots (a factorisation machine's second-order terms), target attention (a soft
match against the user's heaviest list members), exact matches (the whole list's weight on
the candidate's own id: a spec's crosses, rebuilt in the model) and combination counts
(Ali-CCP's combination fields' own values, the counts those fields carry)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.contract import FeatureContract
from training.layers import FieldPooling


class Interaction(nn.Module):
    """Explicit user x item terms for the towers, split like the towers: `user_part` once per
    user (cached with the user representation, `user_width` floats), then per candidate row
    `features(users' parts (U, user_width), user_index (B,), item's pooled fields, item's ids)`
    -> (B, width), which the towers' first layers read beside the item's embeddings through
    `tower_input`: raw, they are products of embeddings near 0.01 or fractions of a list, too
    small for the first layer to learn from in an epoch."""

    user_width: int
    width: int
    # whether the features are functions of the ids alone (no trained parameter), so that a
    # wide term's regression can read them as inputs (MatchCounts: `wide_features`,
    # `wide_width` of them)
    exact = False

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.norm = nn.BatchNorm1d(width)

    def user_part(
        self, pool: FieldPooling, ids: torch.Tensor, w: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def features(
        self,
        users: torch.Tensor | None,
        user_index: torch.Tensor,
        item_pooled: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def tower_input(self, features: torch.Tensor) -> torch.Tensor:
        """What the towers' first layers read of the features: batch-normalised."""
        return self.norm(features)


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

    def features(self, users, user_index, item_pooled, item_ids, item_w=None):
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
        lists, pairs = _shared_pairs(contract, "target attention")
        super().__init__(len(pairs))
        self.item_fields, self.pairs, self.dim = len(contract.side_fields("item")), pairs, dim
        lists = [(start, stop, min(k, stop - start)) for _, start, stop in lists]
        self.lists = lists
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

    def features(self, users, user_index, item_pooled, item_ids, item_w=None):
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


class MatchCounts(Interaction):
    """Exact user x item matches (hard target attention): per (user list, item field) pair of
    one embedding group (TargetAttention's pairs), the list's weight on the candidate's own id,
    summed over the item field's ids (a multi-valued field's each), as a spec's `count_in`
    crosses count, but in the model and from ids alone: a spec without crosses gets what they
    carry. The towers read two features a pair, (found, weight), batch-normalised; a wide
    term's regression reads the one-hot of the weight's octave (`wide_features`: any shape of
    response, as a cross's buckets give it; 18 a pair in the towers would cost the scorer a
    second first layer). With the lists' default mean pooling the weight is the id's share of
    the list; with `pooling: sum`, its count.

    The whole list takes part, not the k heaviest members (attention's reach: a list of 100
    members seen once each has most of its matches past any k the scorer can afford). The user
    part holds each list's valid member ids ascending (float32: exact below 2^24 rows) and at
    each the summed weight of its id's members (summed in float64, exact, so the user tower's
    sums in PyTorch and in ONNX Runtime are the same floats), 2L floats a list of L columns.
    The scorer finds a candidate's id by a binary search of ceil(log2(L + 1)) gathers: the
    same steps in training, export and serving, a cost that does not grow with the users a
    batch holds. Padding, zero weights and the rare ids' shared row (which many ids read)
    match nothing; two ids that hash to one row do (measured: 0.5-4.6% of rows a cross on the
    generator's tables, tests/training/test_match.py)."""

    exact = True

    def __init__(self, contract: FeatureContract):
        lists, pairs = self._pairs(contract)
        super().__init__(2 * len(pairs))
        self.wide_width = (len(MATCH_OCTAVES) + 1) * len(pairs)
        items = contract.columns("item")
        self.pairs = [(i, items[g][1].start, items[g][1].stop) for i, g in pairs]
        self._pair_fields = pairs
        # (list, item field) by name, in the features' order
        self.names = [(lists[i][0], items[g][0].name) for i, g in pairs]
        self.lists = [(start, stop) for _, start, stop in lists]
        widths = [2 * (stop - start) for start, stop in self.lists]
        self.starts = [sum(widths[:i]) for i in range(len(lists))]
        self.user_width = sum(widths)
        # every pair's item columns searched at once, one query a column: the query's list
        # (where its keys start in the user part, how many) and its pair
        cols = [(i, p, col) for p, (i, a, b) in enumerate(self.pairs) for col in range(a, b)]
        self.query_cols = [col for _, _, col in cols]
        n = [self.lists[i][1] - self.lists[i][0] for i, _, _ in cols]
        self.max_len = max(n)
        self.register_buffer("query_n", torch.tensor(n), persistent=False)
        at = [self.starts[i] for i, _, _ in cols]
        self.register_buffer("query_at", torch.tensor(at), persistent=False)
        of_pair = torch.zeros(len(cols), len(self.pairs))
        of_pair[torch.arange(len(cols)), torch.tensor([p for _, p, _ in cols])] = 1.0
        self.register_buffer("of_pair", of_pair, persistent=False)
        rare = [f.offset + f.buckets for f in contract.fields if f.rare]
        self.register_buffer("rare_rows", torch.tensor(rare, dtype=torch.int64), persistent=False)
        self.pad = float(2**24)  # above every id: where the padding members sort

    def _pairs(self, contract: FeatureContract):
        """(lists, pairs) as `_shared_pairs` gives them: the lists searched, and per pair its
        list's index and its item field's."""
        return _match_pairs(contract)

    def _queries(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(B, Q) the row each query looks for in its list: the candidate's own."""
        return item_ids[:, self.query_cols]

    def _valid(self, ids: torch.Tensor) -> torch.Tensor:
        ok = ids > 0
        if len(self.rare_rows):
            ok = ok & ~torch.isin(ids, self.rare_rows)
        return ok

    def user_part(self, pool, ids, w, pooled):
        parts = []
        for start, stop in self.lists:
            lid, lw = ids[:, start:stop], w[:, start:stop]
            ok = self._valid(lid) & (lw != 0)
            key = torch.where(ok, lid.to(torch.float32), torch.full_like(lw, self.pad))
            key, order = torch.sort(key, dim=1)
            weight = torch.gather(torch.where(ok, lw, torch.zeros_like(lw)), 1, order)
            # each run of one id: its members' weights summed (float64: exact, whatever the
            # order the sum takes), written at each of them
            first = torch.cat([torch.ones_like(key[:, :1]), (key[:, 1:] != key[:, :-1]).float()], 1)
            run = torch.cumsum(first.to(torch.int64), dim=1) - 1  # (U, n) the run of each
            total = torch.zeros_like(weight, dtype=torch.float64)
            total = total.scatter_add(1, run, weight.to(torch.float64))
            parts += [key, torch.gather(total, 1, run).to(torch.float32)]
        return torch.cat(parts, dim=1)

    def weights(
        self, users: torch.Tensor, user_index: torch.Tensor, item_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, pairs): each row's list weight on its item field's ids, per pair. Every item
        column of every pair is one query, all searched together as one flat row (B * Q): one
        binary search of the longest list's steps, each query's reads kept inside its own list
        by a clamp to the list's last column (a read past it would meet the list's weights)."""
        shape = (-1, len(self.query_cols))  # (B, Q); B unnamed: the graph's batch is dynamic
        q = self._queries(item_ids).reshape(1, -1)  # (1, B * Q)
        qf = q.to(torch.float32)
        flat = users.reshape(1, -1)  # (1, U * user_width)
        base = (user_index.unsqueeze(1) * users.shape[1] + self.query_at).reshape(1, -1)
        n = self.query_n.expand(item_ids.shape[0], -1).reshape(1, -1)  # each query's list length
        last = base + n - 1  # each query's list's last key

        def take(i):  # flat[i]: torch.gather exports to GatherElements (7x Gather's speed)
            return torch.gather(flat, 1, i)

        at = torch.minimum(_search(self.max_len, qf, take, base, last) + 1, last)
        found = (take(at) == qf) & self._valid(q)
        w = torch.where(found, take(at + n), torch.zeros_like(qf))  # weights follow the keys
        return w.reshape(shape) @ self.of_pair

    def features(self, users, user_index, item_pooled, item_ids, item_w=None):
        w = self.weights(users, user_index, item_ids)  # (B, pairs)
        return torch.stack([(w > 0).to(w.dtype), w], dim=2).flatten(1)  # (found, weight) a pair

    def wide_features(self, features: torch.Tensor) -> torch.Tensor:
        """The towers' features (B, 2 * pairs) -> a regression's inputs (B, wide_width): per
        pair the one-hot of its weight's octave (MATCH_OCTAVES; none found: all zeros), so a
        linear model gets any shape of response, as a cross's buckets give it."""
        return _octave_onehot(features[:, 1::2], MATCH_OCTAVES).flatten(1)


class AlignedMatches(MatchCounts):
    """Exact matches for Ali-CCP's combination fields, rebuilt from ids: what a model left
    without them (`--without`, as an id-only request serves it) reads in their place. Per
    (user list, item field) pair that a combination field counts (FeatureContract.
    aligned_pairs: 109_14 and 206 for 508...), the list's weight on the candidate's id,
    translated into the list's ids. The two sides name one category by different ids; the
    translation is learned from the training rows that carry the combination field
    (training/alignment.py) and held here, per item field row the list row it stands for (0:
    none), a buffer saved and exported with the model. A candidate meets its user's list as
    MatchCounts' does: the features, the wide term's octaves, the cached user part are theirs.
    With mean pooling the weight is the id's share of the list, not the count the field had.
    A model that reads the fields may take it too (`--interactions aligned`); there their
    counts measured better (docs/model-evidence.md), and `auto`, where it keeps the fields,
    reads those."""

    def _pairs(self, contract):
        pairs = contract.aligned_pairs()
        if not pairs:
            raise ValueError(
                "aligned matches: needs Ali-CCP data with a user list and an item field that "
                "a combination field combines (109_14 and 206 for 508...); this contract has none"
            )
        users = {f.name: c for f, c in contract.columns("user")}
        items = [f.name for f in contract.side_fields("item")]
        names = list(dict.fromkeys(lst for lst, _, _ in pairs))
        lists = [(n, users[n].start, users[n].stop) for n in names]
        _search_limits(contract, lists, "aligned matches")
        return lists, [(names.index(lst), items.index(item)) for lst, item, _ in pairs]

    def __init__(self, contract: FeatureContract):
        super().__init__(contract)
        items = contract.side_fields("item")
        fields = [items[g] for _, g in self._pair_fields]
        # where each pair's item field's rows start in `align`, and the field's first row
        starts = [sum(f.rows for f in fields[:p]) for p in range(len(fields))]
        self.align_at = {f.name: (starts[p], f.offset) for p, f in enumerate(fields)}
        self.register_buffer("align", torch.zeros(sum(f.rows for f in fields), dtype=torch.int64))
        pair_of = [p for p, (_, a, b) in enumerate(self.pairs) for _ in range(a, b)]
        base = [starts[p] - fields[p].offset for p in pair_of]
        self.register_buffer("query_shift", torch.tensor(base), persistent=False)

    def _queries(self, item_ids):
        q = item_ids[:, self.query_cols]  # (B, Q) the item fields' rows
        at = torch.where(q > 0, q + self.query_shift, torch.zeros_like(q))
        rows = torch.gather(self.align.unsqueeze(0), 1, at.reshape(1, -1)).reshape(q.shape)
        return torch.where(q > 0, rows, torch.zeros_like(q))

    def set_alignment(self, contract: FeatureContract, alignments) -> None:
        """Writes learned alignments (training/alignment.py Alignment, raw ids) into `align`
        as rows of this contract; an item row two ids share takes the one seen in more rows."""
        align = np.zeros(len(self.align), np.int64)
        rare = self.rare_rows.numpy()
        for a in alignments:
            lst, item, _ = a.names
            if item not in self.align_at:
                continue
            start, offset = self.align_at[item]
            x = contract.field_rows(item, a.item_ids)
            y = contract.field_rows(lst, a.list_ids)
            ok = (x > 0) & (y > 0) & ~np.isin(x, rare) & ~np.isin(y, rare)
            at, y, seen = x[ok] - offset + start, y[ok], a.units[ok]
            order = np.lexsort((seen, at))  # per row, the most seen last
            at, y = at[order], y[order]
            last = np.r_[at[1:] != at[:-1], True] if len(at) else np.zeros(0, bool)
            align[at[last]] = y[last]
        with torch.no_grad():
            self.align.copy_(torch.from_numpy(align))


# a match's weight in octaves: (0, 2^-10], (2^-10, 2^-9], ... (2^5, 2^6], above
MATCH_OCTAVES = tuple(2.0**k for k in range(-10, 7))


class CombinationCounts(Interaction):
    """The counts Ali-CCP's combination fields carry (FeatureContract.counted_fields: 508, the
    user's count for the item's category; 509 shop, 702 brand, 853 intents), read from the
    candidate's own features: what exact matches compute from a spec's shared groups, which
    Ali-CCP's files hand over with each impression. Their ids are opaque (a hashed combination),
    so pooled they give a table row scaled by the count: a slope per combination id, linear in
    a count that runs from 1 to hundreds, from which the towers learn little. Here a
    single-valued field's count is its value (0 where the field is absent or not positive; a
    weight only where the pooling weighs, else 1), a multi-valued field's the number of its
    ids (mean pooling leaves no count in the weights). The towers read two features a field,
    (found, count), through log1p and batch normalisation; a wide term's regression reads the
    one-hot of the count's octave (COUNT_OCTAVES), any shape of response, as a spec's cross's
    buckets give it. No user part: nothing is cached, the scorer reads its own inputs."""

    exact = True
    user_width = 0

    def __init__(self, contract: FeatureContract):
        fields = contract.counted_fields()
        if not fields:
            raise ValueError(
                "combination counts: needs Ali-CCP's combination fields (508, 509, 702, 853), "
                "which this contract does not have"
            )
        super().__init__(2 * len(fields))
        self.names = [f.name for f, _ in fields]
        self.cols = [(c.start, c.stop) for _, c in fields]
        self.wide_width = (len(COUNT_OCTAVES) + 1) * len(fields)

    def user_part(self, pool, ids, w, pooled):
        return None

    def counts(self, item_ids: torch.Tensor, item_w: torch.Tensor) -> torch.Tensor:
        """(B, fields): each row's count per field (see the class)."""
        out = []
        for start, stop in self.cols:
            present = item_ids[:, start:stop] > 0
            if stop - start == 1:
                w = item_w[:, start:stop].clamp(0.0, COUNT_CAP)
                out.append(torch.where(present, w, torch.zeros_like(w)))
            else:
                out.append(present.to(item_w.dtype).sum(1, keepdim=True))
        return torch.cat(out, dim=1)

    def features(self, users, user_index, item_pooled, item_ids, item_w=None):
        n = self.counts(item_ids, item_w)
        return torch.stack([(n > 0).to(n.dtype), n], dim=2).flatten(1)  # (found, count) a field

    def tower_input(self, features):
        return self.norm(torch.log1p(features))

    def wide_features(self, features: torch.Tensor) -> torch.Tensor:
        return _octave_onehot(features[:, 1::2], COUNT_OCTAVES).flatten(1)


def reads_counts(contract: FeatureContract) -> bool:
    """Whether the contract's encoded values hold the combination fields' counts: it has such
    fields and pools with the values as weights (unweighted pooling writes 1s instead)."""
    return bool(contract.counted_fields()) and contract.weighted


# a count in octaves: (0, 1], (1, 2], (2, 4], ... (512, 1024], above; counts above COUNT_CAP
# are read as COUNT_CAP (a value is a float from a file or a request: never inf in the towers)
COUNT_OCTAVES = tuple(2.0**k for k in range(11))
COUNT_CAP = 2.0**20


def _octave_onehot(w: torch.Tensor, octaves: tuple[float, ...]) -> torch.Tensor:
    """(...) weights -> (..., len(octaves) + 1): one-hot of the octave a positive weight falls
    in, (0, octaves[0]], (octaves[0], octaves[1]], ... above the last; all zeros for none."""
    edges = torch.tensor(octaves, dtype=w.dtype)
    above = (w.unsqueeze(-1) > edges).to(w.dtype)  # 1 up to the weight's octave, then 0
    lower = torch.cat([(w > 0).to(w.dtype).unsqueeze(-1), above], dim=-1)
    upper = torch.cat([above, torch.zeros_like(above[..., :1])], dim=-1)
    return lower - upper


def _search(
    n: int,
    t: torch.Tensor,
    keys_at: Callable[[torch.Tensor], torch.Tensor],
    first: torch.Tensor,
    last: torch.Tensor,
) -> torch.Tensor:
    """For each value of t, the position of the last of its ascending keys below it (first - 1
    where none is): `keys_at(i)` reads the key at positions i, t's keys lie at first..last
    (shapes of t), at most n of them. A branchless binary search of ceil(log2(n + 1)) reads,
    each an add, a clamp, the read, a compare and a select, the same ops in training and in the
    exported graphs. The clamp keeps the reads inside t's own keys where they are fewer than n:
    a last key below t leaves the position at the last key (all below), one at or above t does
    not move it, as a bound check would have it."""
    pos = first - 1
    step = 1 << (n.bit_length() - 1)
    while step:
        probe = torch.minimum(pos + step, last)
        pos = torch.where(keys_at(probe) < t, probe, pos)
        step >>= 1
    return pos


def _match_pairs(
    contract: FeatureContract,
) -> tuple[list[tuple[str, int, int]], list[tuple[int, int]]]:
    """`_shared_pairs` for exact matches, which also refuse a contract whose row ids a float32
    does not hold exactly (MatchCounts keeps them as floats)."""
    lists, pairs = _shared_pairs(contract, "exact matches")
    _search_limits(contract, lists, "exact matches")
    return lists, pairs


def _search_limits(contract: FeatureContract, lists: list[tuple[str, int, int]], what: str):
    """What MatchCounts' search refuses, for every kind of it: a contract whose row ids a
    float32 does not hold exactly (the cached lists keep them as floats), and a list of more
    than 4096 columns (the binary search's steps)."""
    if contract.num_rows >= 2**24:
        raise ValueError(
            f"{what} hold ids as float32, exact below 2^24 rows, not {contract.num_rows}"
        )
    for name, start, stop in lists:
        if stop - start > 4096:
            raise ValueError(f"{what}: lists of 4096 columns at most, not {name}")


def _shared_pairs(
    contract: FeatureContract, what: str
) -> tuple[list[tuple[str, int, int]], list[tuple[int, int]]]:
    """The user lists ((name, start, stop) columns) that share an embedding table with an item
    field, and the (list, item field index) pairs: a spec's `embedding:` groups, recent
    categories and the item's category..."""
    item = contract.side_fields("item")
    lists, pairs = [], []
    for f, cols in contract.columns("user"):
        partners = [g for g, it in enumerate(item) if f.embedding and it.table == f.table]
        if f.max_len > 1 and partners:
            if f.max_len > 4096:
                raise ValueError(f"{what}: lists of 4096 columns at most, not {f.name}")
            pairs += [(len(lists), g) for g in partners]
            lists.append((f.name, cols.start, cols.stop))
    if not pairs:
        raise ValueError(
            f"{what}: needs a user list and an item field in one embedding group "
            "(a spec's `embedding:` key); this contract has none"
        )
    return lists, pairs


def chosen_interactions(
    choice: str, two_towers: bool, contract: FeatureContract
) -> tuple[str, str]:
    """Training's `--interactions` made concrete for a contract, and why. `auto` (the default)
    is combination counts where the contract has Ali-CCP's combination fields and weighs by
    their values (the counts are their values: docs/model-evidence.md, "Combination counts"),
    which a run then replaces by aligned matches without the fields where their learned rules
    rebuild them (training/prepare.py read_and_choose: that needs the data);
    aligned matches on Ali-CCP data that leaves them out (id-only serving: they rebuild what
    the fields carried, and measured above the model that reads them: "Aligned matches"; the
    run falls back to none where no field's learned rule holds); exact matches where a user
    list shares an embedding group with an item field that no cross counts: without a spec's
    crosses, matches rebuild what they carry (the full model's CTR and CTCVR within 0.005 on
    the default set, far above the plain towers), with them they add nothing measurable and
    cost the scorer 1.3x (docs/model-evidence.md, "Exact matches"); and none otherwise. A kind
    without two towers, a contract without such a group, or one exact matches refuse (a list
    over 4096 columns, 2^24 rows or more) gets none. Any other choice stands as given."""
    if choice != "auto":
        return choice, "as given"
    if not two_towers:
        return "none", "the kind has no towers to read interactions"
    if contract.counted_fields():
        if not reads_counts(contract):
            return (
                "none",
                "the combination fields' counts are their values, which unweighted pooling drops",
            )
        counted = ", ".join(f.name for f, _ in contract.counted_fields())
        return "counts", f"the counts of combination fields {counted}"
    if contract.aligned_pairs():
        try:
            AlignedMatches(contract)
        except ValueError as e:  # what AlignedMatches would refuse
            return "none", str(e)
        left = ", ".join(c for _, _, c in contract.aligned_pairs())
        return "aligned", f"combination fields {left} left out: rebuilt from the ids they combine"
    try:
        lists, pairs = _match_pairs(contract)
    except ValueError as e:  # what MatchCounts would refuse
        return "none", str(e)
    items = contract.side_fields("item")
    crossed = {tuple(f.cross) for f in contract.fields if f.cross}
    open_pairs = [(lists[i][0], items[g].name) for i, g in pairs]
    open_pairs = [p for p in open_pairs if p not in crossed]
    if not open_pairs:
        return "none", "every shared (list, item field) pair is counted by a cross"
    named = ", ".join(f"{a} x {b}" for a, b in open_pairs)
    return "match", f"pairs no cross counts: {named}"


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
