"""The Ali-CCP files of a synthetic set: ids in one space spanning every field, features
formatted once per distinct value, the skeleton, common-features, truth and action files of each
split (no header but on truth and action files)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from features.contract import ALL_FIELDS, USER_FIELDS
from training.synthetic.impressions import Impressions, Sessions
from training.synthetic.world import MAX_COUNT, Behaviour, Users, World

# One id space spans every field, as in the real data: field k owns [k, k + 1) * ID_RANGE.
ID_RANGE = 10_000_000
FIELD_BASE = {name: (k + 1) * ID_RANGE for k, name in enumerate(ALL_FIELDS)}
# Odd and not a multiple of 5, so multiplying by it permutes [0, ID_RANGE): combination ids look
# hashed but never collide.
_MIX = 2_718_281
SPLITS = ("train", "test")
SEP_FEAT, SEP_ID, SEP_VAL = "\x01", "\x02", "\x03"


# ---- formatting ----------------------------------------------------------------------------
def _feat(field: str, fid: int, value: int | float = 1) -> str:
    return f"{field}{SEP_ID}{fid}{SEP_VAL}{float(value)}"


def _combo_id(field: str, attr: np.ndarray) -> np.ndarray:
    salt = int(field.replace("_", "")) * 7919
    return FIELD_BASE[field] + (attr.astype(np.int64) * _MIX + salt) % ID_RANGE


def _user_lines(users: Users) -> list[str]:
    """'feature_num,feature_list' per user, formatted once and reused for every session."""
    toks: list[list[str]] = [[] for _ in range(users.n)]
    for field, vals in users.singles.items():
        base = FIELD_BASE[field]
        for u, v in enumerate(vals.tolist()):
            if v >= 0:
                toks[u].append(_feat(field, base + v))
    for field in USER_FIELDS:
        if field in users.lists:
            _append_list(toks, users.lists[field])
    return [f"{len(t)},{SEP_FEAT.join(t)}" for t in toks]


def _append_list(toks: list[list[str]], b: Behaviour) -> None:
    # Few distinct (member, count) pairs: format each once.
    code = b.member * (MAX_COUNT + 1) + b.count
    uniq, inv = np.unique(code, return_inverse=True)
    base = FIELD_BASE[b.field]
    vocab = np.array(
        [_feat(b.field, base + c // (MAX_COUNT + 1), c % (MAX_COUNT + 1)) for c in uniq.tolist()],
        dtype=object,
    )
    strs = vocab[inv].tolist()
    bounds = np.r_[0, np.cumsum(np.bincount(b.user, minlength=len(toks)))].tolist()
    for u in range(len(toks)):
        toks[u].extend(strs[bounds[u] : bounds[u + 1]])


def _item_tokens(w: World) -> tuple[list[str], np.ndarray]:
    """Per item its joined 205/206/207/216/210 features and their number."""
    it = w.items
    intents = (FIELD_BASE["210"] + it.intent).tolist()
    ptr = it.intent_ptr.tolist()
    out = []
    for i, (c, s, b) in enumerate(
        zip(it.cat.tolist(), it.shop.tolist(), it.brand.tolist(), strict=True)
    ):
        feats = [
            _feat("205", FIELD_BASE["205"] + i),
            _feat("206", FIELD_BASE["206"] + c),
            _feat("207", FIELD_BASE["207"] + s),
            _feat("216", FIELD_BASE["216"] + b),
        ]
        feats += [_feat("210", f) for f in intents[ptr[i] : ptr[i + 1]]]
        out.append(SEP_FEAT.join(feats))
    return out, 4 + np.diff(it.intent_ptr)


def _combo_tokens(w: World, imp: Impressions) -> tuple[np.ndarray, list[str]]:
    """Combination features of every impression: (impression index, token string), sorted."""
    it = w.items
    parts = []
    for field, attr, count in (
        ("508", it.cat[imp.item], imp.n508),
        ("509", it.shop[imp.item], imp.n509),
        ("702", it.brand[imp.item], imp.n702),
    ):
        hit = np.flatnonzero(count > 0)
        parts.append((field, hit, attr[hit], count[hit]))
    parts.append(("853", *imp.match853))
    owner = np.concatenate([h for _, h, _, _ in parts])
    strs = np.concatenate([_format_combo(f, a, c) for f, _, a, c in parts])
    order = np.argsort(owner, kind="stable")
    return owner[order], strs[order].tolist()


def _format_combo(field: str, attr: np.ndarray, count: np.ndarray) -> np.ndarray:
    code = attr.astype(np.int64) * (MAX_COUNT + 1) + count
    uniq, inv = np.unique(code, return_inverse=True)
    ids = _combo_id(field, uniq // (MAX_COUNT + 1)).tolist()
    vocab = np.array(
        [_feat(field, i, c) for i, c in zip(ids, (uniq % (MAX_COUNT + 1)).tolist(), strict=True)],
        dtype=object,
    )
    return vocab[inv] if len(inv) else np.empty(0, dtype=object)


def _skeleton_lines(
    s: Sessions,
    imp: Impressions,
    rows: np.ndarray,
    item_strs: list[str],
    item_nf: np.ndarray,
    combos: tuple,
) -> Iterable[str]:
    owner, strs = combos
    lo = np.searchsorted(owner, rows).tolist()
    hi = np.searchsorted(owner, rows, side="right").tolist()
    scene_strs = [_feat("301", FIELD_BASE["301"] + k) for k in range(int(s.scene.max()) + 1)]
    nf = (item_nf[imp.item[rows]] + np.asarray(hi) - np.asarray(lo) + 1).tolist()
    cols = zip(
        rows.tolist(),
        imp.click[rows].tolist(),
        imp.conv[rows].tolist(),
        imp.session[rows].tolist(),
        imp.item[rows].tolist(),
        imp.scene[rows].tolist(),
        nf,
        lo,
        hi,
        strict=True,
    )
    for r, c, v, sess, i, sc, n, a, b in cols:
        feats = SEP_FEAT.join([item_strs[i], *strs[a:b], scene_strs[sc]])
        yield f"{r + 1},{int(c)},{int(v)},{s.index[sess]},{n},{feats}\n"


# ---- writing -------------------------------------------------------------------------------
def write_splits(out: Path, w: World, users: Users, s: Sessions, imp: Impressions) -> None:
    """sample_skeleton, common_features and truth files of both splits."""
    user_lines = _user_lines(users)
    item_tok = _item_tokens(w)
    combos = _combo_tokens(w, imp)
    for split in SPLITS:
        _write_split(out, split, s, imp, user_lines, item_tok, combos)
    write_truth(out, s, imp)


def write_item_table(out: Path, w: World) -> None:
    """items.parquet: one row per item in the layout `ranker items build --table` reads
    (features/item_source.py): its raw 206/207/216/210 ids, as in the skeleton, and its price."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    it = w.items
    intents = FIELD_BASE["210"] + it.intent
    table = pa.table(
        {
            "item_id": FIELD_BASE["205"] + np.arange(len(it.cat), dtype=np.int64),
            "206": FIELD_BASE["206"] + it.cat.astype(np.int64),
            "207": FIELD_BASE["207"] + it.shop.astype(np.int64),
            "216": FIELD_BASE["216"] + it.brand.astype(np.int64),
            "210": pa.ListArray.from_arrays(it.intent_ptr.astype(np.int32), intents),
            "price": it.price,
        }
    )
    pq.write_table(table, out / "items.parquet")


def write_actions(out: Path, s: Sessions, imp: Impressions, action: np.ndarray) -> None:
    """action_{split}.csv (sample_id,action) of both splits."""
    for split in SPLITS:
        _, rows = _split_rows(s, imp, split)
        with open(out / f"action_{split}.csv", "w", encoding="ascii", newline="") as f:
            f.write("sample_id,action\n")
            f.writelines(
                f"{r + 1},{int(a)}\n"
                for r, a in zip(rows.tolist(), action[rows].tolist(), strict=True)
            )


def _split_rows(s: Sessions, imp: Impressions, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's sessions (a mask) and its impressions (in order: sessions stay contiguous)."""
    in_split = s.test if split == "test" else ~s.test
    return in_split, np.flatnonzero(in_split[imp.session])


def _write_split(
    out: Path,
    split: str,
    s: Sessions,
    imp: Impressions,
    user_lines: list[str],
    item_tok: tuple,
    combos: tuple,
) -> None:
    in_split, rows = _split_rows(s, imp, split)
    with open(out / f"sample_skeleton_{split}.csv", "w", encoding="ascii", newline="") as f:
        f.writelines(_skeleton_lines(s, imp, rows, *item_tok, combos))
    with open(out / f"common_features_{split}.csv", "w", encoding="ascii", newline="") as f:
        f.writelines(
            f"{s.index[k]},{user_lines[u]}\n"
            for k, u in zip(
                np.flatnonzero(in_split).tolist(), s.user[in_split].tolist(), strict=True
            )
        )


def write_truth(out: Path, s: Sessions, imp: Impressions) -> None:
    """truth_{split}.csv of both splits: each impression's true probabilities, by sample id, in
    the split's order (both layouts write it: the named tables have it beside them too)."""
    for split in SPLITS:
        _, rows = _split_rows(s, imp, split)
        with open(out / f"truth_{split}.csv", "w", encoding="ascii", newline="") as f:
            f.write("sample_id,p_click,p_conversion\n")
            f.writelines(
                f"{r + 1},{a:.8f},{b:.8f}\n"
                for r, a, b in zip(
                    rows.tolist(),
                    imp.p_click[rows].tolist(),
                    imp.p_conv[rows].tolist(),
                    strict=True,
                )
            )
