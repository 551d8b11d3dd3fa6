"""Synthetic Ali-CCP logs with a planted ground truth, to compare a trained model with the oracle.

`python -m training.generate --out DIR` writes the four raw Ali-CCP files (same layout, no
header), `truth_{split}.csv` with each impression's true P(click) and P(conversion | click), and
`generator.json` with the parameters and a summary (counts, oracle AUCs).

Planted truth. Click and conversion are driven by different factors, so attractive-but-poor and
plain-but-good items both exist (the field that shows each term to a model in brackets; the
weights are `Params`):
  click logit = b0 + attract[item] (205) + appeal[category] (206) + class[121] (121)
                + propensity[user] (101) + scene[301] (301)
                + w_aff * log1p(count of the item's category in the user's 109_14)   (508 value)
                + w_int * min(number of the item's intents in the user's 150_14, 3)  (853)
  conv logit  = c0 + quality[item] (205; correlation -0.3 with attract) + reputation[shop] (207)
                + w_brand * log1p(count of the item's brand in the user's 127_14)    (702 value)
                + w_price * (1 - |consumption level (127) - price tier[category] (206)|)
                + w_126 * (level 126 - 1), 0 where the user has no field 126
                + w_conv_relevance * relevance     (0 by default)
where relevance = w_aff * log1p(n508) + w_int * min(n853, 3), the click logit's personal part.
With w_conv_relevance > 0 the two tasks share a factor that clicked impressions over-represent
(the sample selection bias ESMM is about), and with quality_attract_corr > 0 items that draw
clicks also convert: the regime where the paper expects entire-space training to pay.
b0 and c0 are solved so that CTR and P(conversion | click) hit their targets; labels are drawn
from exactly the probabilities written to truth_*.csv. Most of the click signal sits on shared
ids (category, class, scene, affinity), so a model can learn it from a few hundred thousand rows.
A user's behaviour lists are drawn once and repeated in every one of their sessions' rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from features.contract import ALL_FIELDS, USER_FIELDS
from training.metrics import auc

# One id space spans every field, as in the real data: field k owns [k, k + 1) * ID_RANGE.
ID_RANGE = 10_000_000
FIELD_BASE = {name: (k + 1) * ID_RANGE for k, name in enumerate(ALL_FIELDS)}
# Odd and not a multiple of 5, so multiplying by it permutes [0, ID_RANGE): combination ids look
# hashed but never collide.
_MIX = 2_718_281
MAX_COUNT = 20
SPLITS = ("train", "test")
SEP_FEAT, SEP_ID, SEP_VAL = "\x01", "\x02", "\x03"


@dataclasses.dataclass(frozen=True)
class Params:
    """Everything but size and seed; written to generator.json."""

    # populations
    categories: int = 600
    shops: int = 800
    brands: int = 2500
    intents: int = 2000
    scenes: int = 4
    user_classes: int = 12  # field 121
    home_categories: int = 3  # categories a user cares most about
    impressions_per_user: int = 60
    impressions_per_item: int = 40
    min_users: int = 200
    min_items: int = 500
    item_zipf: float = 0.9
    user_zipf: float = 0.6
    category_zipf: float = 1.0
    targeted_share: float = 0.35  # impressions drawn from the user's home categories
    home_draw_share: float = 0.3  # behaviour-list draws from the user's home categories
    session_median: float = 15.0
    # behaviour list lengths: (field, median, log-sigma, min, max)
    list_lengths: tuple = (
        ("109_14", 55, 0.45, 20, 150),
        ("110_14", 140, 0.5, 50, 400),
        ("127_14", 95, 0.5, 30, 300),
        ("150_14", 85, 0.5, 30, 250),
    )
    field_126_missing: float = 0.3
    # click effects
    target_ctr: float = 0.05
    sd_item_attract: float = 0.35
    sd_category_appeal: float = 0.55
    w_category_affinity: float = 0.45
    sd_user_class: float = 0.5
    sd_user_propensity: float = 0.15
    w_intent: float = 0.25
    sd_scene: float = 0.45
    # conversion effects
    target_cvr: float = 0.15
    sd_item_quality: float = 0.45
    quality_attract_corr: float = -0.3
    sd_shop_reputation: float = 0.6
    w_brand_affinity: float = 0.6
    w_price_fit: float = 0.8
    w_126: float = 0.2
    w_conv_relevance: float = 0.0  # weight of the click's relevance in the conversion logit
    # the optional post-click action label (cart / wish: ESM2's DAction), drawn for clicked
    # impressions from its own random stream, so the other files are the same with or without it
    action_given_buy: float = 0.6
    action_given_no_buy: float = 0.12


# ---- small numeric helpers -----------------------------------------------------------------
def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf popularity over a random permutation, so popularity is unrelated to the id."""
    w = (rng.permutation(n) + 1.0) ** -exponent
    return w / w.sum()


def _lognormal_int(
    rng: np.random.Generator, n: int, median: float, sigma: float, lo: int, hi: int
) -> np.ndarray:
    return np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(n))), lo, hi).astype(
        np.int64
    )


def _standardised(rng: np.random.Generator, n: int) -> np.ndarray:
    """n normal draws rescaled to mean 0, sd 1: with a handful of levels (scenes, user classes)
    raw draws would make the oracle AUC swing from seed to seed."""
    z = rng.standard_normal(n)
    return (z - z.mean()) / z.std()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _solve_intercept(z: np.ndarray, weight: np.ndarray, target: float) -> float:
    """Intercept b with weighted mean of sigmoid(b + z) == target (bisection; it is monotone)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.average(_sigmoid(mid + z), weights=weight) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _combo_id(field: str, attr: np.ndarray) -> np.ndarray:
    salt = int(field.replace("_", "")) * 7919
    return FIELD_BASE[field] + (attr.astype(np.int64) * _MIX + salt) % ID_RANGE


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == query] per query (keys sorted), 0 where the key is absent."""
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


# ---- catalogues ----------------------------------------------------------------------------
@dataclasses.dataclass
class _Members:
    """A universe (shops, brands, ...) grouped by category, to draw members of given categories."""

    cat: np.ndarray
    weight: np.ndarray
    order: np.ndarray
    cum: np.ndarray
    first: np.ndarray
    end: np.ndarray

    @classmethod
    def build(cls, cat: np.ndarray, weight: np.ndarray, n_cat: int) -> _Members:
        order = np.argsort(cat, kind="stable")
        end = np.cumsum(np.bincount(cat, minlength=n_cat))
        return cls(
            cat,
            weight / weight.sum(),
            order,
            np.cumsum(weight[order]),
            end - np.bincount(cat, minlength=n_cat),
            end,
        )

    def __len__(self) -> int:
        return len(self.cat)

    def draw(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        """One member per entry: of category cats[k] by weight, or any member where cats[k] < 0
        or the category has none."""
        out = rng.choice(len(self), size=len(cats), p=self.weight)
        ok = cats >= 0
        ok[ok] = self.end[cats[ok]] > self.first[cats[ok]]
        c = cats[ok]
        lo = np.where(self.first[c] > 0, self.cum[self.first[c] - 1], 0.0)
        r = lo + rng.random(len(c)) * (self.cum[self.end[c] - 1] - lo)
        pos = np.clip(np.searchsorted(self.cum, r, side="right"), self.first[c], self.end[c] - 1)
        out[ok] = self.order[pos]
        return out


def _universe(rng: np.random.Generator, n: int, cat_weight: np.ndarray) -> _Members:
    """n members spread over categories by category popularity, every category owning one."""
    n_cat = len(cat_weight)
    cat = np.concatenate([np.arange(n_cat), rng.choice(n_cat, size=n - n_cat, p=cat_weight)])
    return _Members.build(cat, np.exp(rng.standard_normal(n)), n_cat)


def _distinct(
    owner: np.ndarray, member: np.ndarray, length: np.ndarray, n_members: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per owner the first length[owner] distinct members in draw order (draws grouped by
    owner), returned sorted by (owner, member)."""
    key = owner * n_members + member
    _, first = np.unique(key, return_index=True)
    first.sort()
    kept_owner = owner[first]
    starts = np.searchsorted(kept_owner, kept_owner, side="left")
    keep = np.arange(len(first)) - starts < length[kept_owner]
    key = np.sort(key[first[keep]])
    return key // n_members, key % n_members


@dataclasses.dataclass
class _Items:
    cat: np.ndarray
    shop: np.ndarray
    brand: np.ndarray
    intent_ptr: np.ndarray
    intent: np.ndarray
    pop: np.ndarray
    attract: np.ndarray
    quality: np.ndarray


@dataclasses.dataclass
class _World:
    """Categories, attribute universes, items and their latents."""

    cats: _Members
    cat_tier: np.ndarray
    cat_appeal: np.ndarray
    shops: _Members
    shop_rep: np.ndarray
    brands: _Members
    intents: _Members
    items: _Items


def _make_items(
    rng: np.random.Generator,
    p: Params,
    n: int,
    cats: _Members,
    shops: _Members,
    brands: _Members,
    intents: _Members,
) -> _Items:
    cat = cats.draw(rng, np.full(n, -1))
    n_int = np.clip(rng.geometric(0.35, size=n), 1, 10)
    n_draw = 2 * n_int + 2
    owner = np.repeat(np.arange(n), n_draw)
    # Most of an item's intents are its category's, so intent matches carry category taste.
    from_cat = rng.random(len(owner)) < 0.7
    int_owner, intent = _distinct(
        owner, intents.draw(rng, np.where(from_cat, cat[owner], -1)), n_int, len(intents)
    )
    attract = rng.standard_normal(n)
    rho = p.quality_attract_corr
    quality = rho * attract + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return _Items(
        cat=cat,
        shop=shops.draw(rng, cat),
        brand=brands.draw(rng, cat),
        intent_ptr=np.r_[0, np.cumsum(np.bincount(int_owner, minlength=n))],
        intent=intent,
        pop=_zipf_weights(rng, n, p.item_zipf),
        attract=p.sd_item_attract * attract,
        quality=p.sd_item_quality * quality,
    )


def _make_world(rng: np.random.Generator, p: Params, n_items: int) -> _World:
    cat_w = _zipf_weights(rng, p.categories, p.category_zipf)
    cats = _Members.build(np.arange(p.categories), cat_w, p.categories)
    shops, brands, intents = (_universe(rng, n, cat_w) for n in (p.shops, p.brands, p.intents))
    return _World(
        cats=cats,
        cat_tier=rng.integers(0, 4, p.categories),
        cat_appeal=p.sd_category_appeal * rng.standard_normal(p.categories),
        shops=shops,
        shop_rep=p.sd_shop_reputation * rng.standard_normal(p.shops),
        brands=brands,
        intents=intents,
        items=_make_items(rng, p, n_items, cats, shops, brands, intents),
    )


# ---- users ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Behaviour:
    """One behaviour field of all users: (user, member) keys sorted, with counts."""

    field: str
    n_members: int
    user: np.ndarray
    member: np.ndarray
    count: np.ndarray

    def keys(self) -> np.ndarray:
        return self.user * self.n_members + self.member

    def count_of(self, user: np.ndarray, member: np.ndarray) -> np.ndarray:
        return _lookup(self.keys(), self.count, user * self.n_members + member)


@dataclasses.dataclass
class _Users:
    n: int
    home: np.ndarray  # (n, home_categories)
    singles: dict[str, np.ndarray]  # field -> local value id, -1 = absent
    propensity: np.ndarray
    pop: np.ndarray
    lists: dict[str, _Behaviour]


def _behaviour(
    rng: np.random.Generator, p: Params, spec: tuple, universe: _Members, home: np.ndarray
) -> _Behaviour:
    field, median, sigma, lo, hi = spec
    n_users = len(home)
    length = _lognormal_int(rng, n_users, median, sigma, lo, hi)
    owner = np.repeat(np.arange(n_users), 2 * length + 8)  # oversampled: duplicates are dropped
    at_home = rng.random(len(owner)) < p.home_draw_share
    pick = home[owner, rng.integers(0, home.shape[1], len(owner))]
    member = universe.draw(rng, np.where(at_home, pick, -1))
    user, member = _distinct(owner, member, length, len(universe))
    # Members of the user's home categories were acted on far more often.
    is_home = (home[user] == universe.cat[member][:, None]).any(axis=1)
    count = rng.geometric(0.5, len(user)) + is_home * rng.geometric(0.15, len(user))
    return _Behaviour(field, len(universe), user, member, np.minimum(count, MAX_COUNT))


def _make_users(rng: np.random.Generator, p: Params, n: int, w: _World) -> _Users:
    home = rng.choice(p.categories, size=(n, p.home_categories), p=w.cats.weight)
    level = rng.choice(4, size=n, p=[0.3, 0.35, 0.25, 0.1])
    cls = rng.integers(0, p.user_classes, n)
    singles = {
        "101": np.arange(n),
        "121": cls,
        "122": cls * 4 + rng.integers(0, 4, n),  # sub-class of 121
        "124": rng.integers(0, 2, n),
        "125": rng.integers(0, 7, n),
        "126": np.where(rng.random(n) < p.field_126_missing, -1, rng.integers(0, 3, n)),
        "127": level,
        "128": rng.integers(0, 5, n),
        "129": rng.integers(0, 40, n),
    }
    universes = {"109_14": w.cats, "110_14": w.shops, "127_14": w.brands, "150_14": w.intents}
    lists = {spec[0]: _behaviour(rng, p, spec, universes[spec[0]], home) for spec in p.list_lengths}
    class_effect = p.sd_user_class * _standardised(rng, p.user_classes)
    propensity = class_effect[cls] + p.sd_user_propensity * rng.standard_normal(n)
    return _Users(
        n=n,
        home=home,
        singles=singles,
        propensity=propensity,
        pop=_zipf_weights(rng, n, p.user_zipf),
        lists=lists,
    )


# ---- sessions and impressions --------------------------------------------------------------
@dataclasses.dataclass
class _Sessions:
    user: np.ndarray
    length: np.ndarray
    scene: np.ndarray
    test: np.ndarray  # bool
    index: list[str]  # common_feature_index


def _session_index(seed: int, n: int) -> list[str]:
    """Unique 16-hex-digit ids: splitmix64 is a bijection of uint64, so distinct inputs give
    distinct ids."""
    x = np.arange(n, dtype=np.uint64) + np.uint64((seed * 0x9E3779B1) & 0xFFFFFFFF) * np.uint64(
        1 << 32
    )
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return [f"{v:016x}" for v in x.tolist()]


def _make_sessions(
    rng: np.random.Generator,
    p: Params,
    impressions: int,
    seed: int,
    test_fraction: float,
    users: _Users,
) -> _Sessions:
    length = _lognormal_int(rng, impressions // 5 + 1, p.session_median, 0.55, 5, 40)
    n = int(np.searchsorted(np.cumsum(length), impressions)) + 1
    length = length[:n]
    for _ in range(int(length.sum()) - impressions):  # fewer than 40 trims
        length[np.argmax(length)] -= 1
    test = np.zeros(n, dtype=bool)
    n_test = int(round(n * test_fraction))
    if 0 < test_fraction < 1 and n > 1:
        n_test = min(max(n_test, 1), n - 1)
    test[rng.choice(n, size=n_test, replace=False)] = True
    scene_p = np.array([0.5, 0.25, 0.15, 0.1])[: p.scenes]
    return _Sessions(
        user=rng.choice(users.n, size=n, p=users.pop),
        length=length,
        scene=rng.choice(p.scenes, size=n, p=scene_p / scene_p.sum()),
        test=test,
        index=_session_index(seed, n),
    )


@dataclasses.dataclass
class _Impressions:
    session: np.ndarray
    user: np.ndarray
    item: np.ndarray
    scene: np.ndarray
    n508: np.ndarray
    n509: np.ndarray
    n702: np.ndarray
    match853: tuple[np.ndarray, np.ndarray, np.ndarray]  # (impression, intent, count)
    p_click: np.ndarray
    p_conv: np.ndarray
    click: np.ndarray
    conv: np.ndarray
    intercepts: dict[str, float]


def _choose_items(
    rng: np.random.Generator, p: Params, w: _World, users: _Users, user: np.ndarray
) -> np.ndarray:
    """A recommender's mix: some impressions from the user's home categories, the rest by item
    popularity."""
    n = len(user)
    items = w.items
    targeted = rng.random(n) < p.targeted_share
    pick = users.home[user, rng.integers(0, users.home.shape[1], n)]
    grouped = _Members.build(items.cat, items.pop, p.categories)
    return grouped.draw(rng, np.where(targeted, pick, -1))


def _intent_matches(
    w: _World, users: _Users, user: np.ndarray, item: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = w.items
    per = np.diff(items.intent_ptr)[item]
    imp = np.repeat(np.arange(len(item)), per)
    offset = np.arange(len(imp)) - np.repeat(np.cumsum(per) - per, per)
    intent = items.intent[items.intent_ptr[item][imp] + offset]
    count = users.lists["150_14"].count_of(user[imp], intent)
    hit = count > 0
    return imp[hit], intent[hit], count[hit]


def _make_impressions(
    rng: np.random.Generator, p: Params, w: _World, users: _Users, s: _Sessions
) -> _Impressions:
    session = np.repeat(np.arange(len(s.length)), s.length)
    user, scene = s.user[session], s.scene[session]
    item = _choose_items(rng, p, w, users, user)
    it = w.items
    cat = it.cat[item]
    n508 = users.lists["109_14"].count_of(user, cat)
    n509 = users.lists["110_14"].count_of(user, it.shop[item])
    n702 = users.lists["127_14"].count_of(user, it.brand[item])
    match = _intent_matches(w, users, user, item)
    n853 = np.bincount(match[0], minlength=len(item))
    scene_effect = p.sd_scene * _standardised(rng, p.scenes)
    z_click = (
        it.attract[item]
        + w.cat_appeal[cat]
        + p.w_category_affinity * np.log1p(n508)
        + users.propensity[user]
        + p.w_intent * np.minimum(n853, 3)
        + scene_effect[scene]
    )
    relevance = p.w_category_affinity * np.log1p(n508) + p.w_intent * np.minimum(n853, 3)
    z_conv = _conversion_logit(p, w, users, user, item, n702) + p.w_conv_relevance * relevance
    b0 = _solve_intercept(z_click, np.ones_like(z_click), p.target_ctr)
    p_click = _quantise(_sigmoid(b0 + z_click))
    c0 = _solve_intercept(z_conv, p_click, p.target_cvr)
    p_conv = _quantise(_sigmoid(c0 + z_conv))
    click = rng.random(len(item)) < p_click
    conv = click & (rng.random(len(item)) < p_conv)
    return _Impressions(
        session=session,
        user=user,
        item=item,
        scene=scene,
        n508=n508,
        n509=n509,
        n702=n702,
        match853=match,
        p_click=p_click,
        p_conv=p_conv,
        click=click,
        conv=conv,
        intercepts={"click": round(b0, 6), "conversion": round(c0, 6)},
    )


def _conversion_logit(
    p: Params, w: _World, users: _Users, user: np.ndarray, item: np.ndarray, n702: np.ndarray
) -> np.ndarray:
    """Without the intercept; attractiveness plays no part."""
    it = w.items
    level2 = users.singles["126"][user]
    price_fit = 1 - np.abs(users.singles["127"][user] - w.cat_tier[it.cat[item]])
    return (
        it.quality[item]
        + w.shop_rep[it.shop[item]]
        + p.w_brand_affinity * np.log1p(n702)
        + p.w_price_fit * price_fit
        + p.w_126 * np.where(level2 >= 0, level2 - 1, 0)
    )


def _quantise(prob: np.ndarray) -> np.ndarray:
    """Round to the 8 decimals written to truth_*.csv, so labels come from the written values."""
    return np.round(np.clip(prob, 1e-6, 1 - 1e-6), 8)


# ---- formatting ----------------------------------------------------------------------------
def _feat(field: str, fid: int, value: int | float = 1) -> str:
    return f"{field}{SEP_ID}{fid}{SEP_VAL}{float(value)}"


def _user_lines(users: _Users) -> list[str]:
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


def _append_list(toks: list[list[str]], b: _Behaviour) -> None:
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


def _item_tokens(w: _World) -> tuple[list[str], np.ndarray]:
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


def _combo_tokens(w: _World, imp: _Impressions) -> tuple[np.ndarray, list[str]]:
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
    s: _Sessions,
    imp: _Impressions,
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
def _write_split(
    out: Path,
    split: str,
    s: _Sessions,
    imp: _Impressions,
    user_lines: list[str],
    item_tok: tuple,
    combos: tuple,
) -> None:
    in_split = s.test if split == "test" else ~s.test
    rows = np.flatnonzero(in_split[imp.session])  # sessions stay contiguous: rows are in order
    with open(out / f"sample_skeleton_{split}.csv", "w", encoding="ascii", newline="") as f:
        f.writelines(_skeleton_lines(s, imp, rows, *item_tok, combos))
    with open(out / f"common_features_{split}.csv", "w", encoding="ascii", newline="") as f:
        f.writelines(
            f"{s.index[k]},{user_lines[u]}\n"
            for k, u in zip(
                np.flatnonzero(in_split).tolist(), s.user[in_split].tolist(), strict=True
            )
        )
    with open(out / f"truth_{split}.csv", "w", encoding="ascii", newline="") as f:
        f.write("sample_id,p_click,p_conversion\n")
        f.writelines(
            f"{r + 1},{a:.8f},{b:.8f}\n"
            for r, a, b in zip(
                rows.tolist(), imp.p_click[rows].tolist(), imp.p_conv[rows].tolist(), strict=True
            )
        )


def _write_actions(out: Path, p: Params, seed: int, s: _Sessions, imp: _Impressions) -> None:
    """Clicked impressions take a post-click action (cart, wish) with a probability that
    depends on whether they convert: the action carries signal about the purchase."""
    rng = np.random.default_rng(seed + 7919)
    p_act = np.where(imp.conv > 0, p.action_given_buy, p.action_given_no_buy)
    action = (imp.click > 0) & (rng.random(len(imp.click)) < p_act)
    for split in SPLITS:
        in_split = s.test if split == "test" else ~s.test
        rows = np.flatnonzero(in_split[imp.session])
        with open(out / f"action_{split}.csv", "w", encoding="ascii", newline="") as f:
            f.write("sample_id,action\n")
            f.writelines(
                f"{r + 1},{int(a)}\n"
                for r, a in zip(rows.tolist(), action[rows].tolist(), strict=True)
            )


def _rounded(x: float) -> float | None:
    """JSON has no NaN: an AUC of a split with one class only becomes null."""
    return None if np.isnan(x) else round(float(x), 5)


def _split_summary(s: _Sessions, imp: _Impressions, test: bool) -> dict:
    rows = s.test[imp.session] == test
    click, conv = imp.click[rows], imp.conv[rows]
    pc, pv = imp.p_click[rows], imp.p_conv[rows]
    return {
        "impressions": int(rows.sum()),
        "clicks": int(click.sum()),
        "conversions": int(conv.sum()),
        "sessions": int((s.test == test).sum()),
        "users": int(np.unique(s.user[s.test == test]).size),
        "ctr": _rounded(click.mean() if len(click) else np.nan),
        "cvr": _rounded(conv.sum() / click.sum() if click.any() else np.nan),
        "oracle_auc": {
            "ctr": _rounded(auc(click, pc)),
            "cvr": _rounded(auc(conv[click], pv[click])),
            "ctcvr": _rounded(auc(conv, pc * pv)),
        },
    }


def generate(
    out: Path,
    impressions: int = 200_000,
    seed: int = 0,
    test_fraction: float = 0.25,
    overrides: dict[str, float] | None = None,
    action_label: bool = False,
) -> dict:
    """Write a synthetic Ali-CCP data set into `out`; returns the per-split summary.
    `overrides` replaces numeric Params (e.g. {"target_cvr": 0.03} for scarcer conversions);
    `action_label` also writes action_{split}.csv (sample_id,action): a post-click action such
    as add-to-cart, for ESM2."""
    if impressions < 100:
        raise ValueError(f"need at least 100 impressions, got {impressions}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    p = with_overrides(Params(), overrides or {})
    rng = np.random.default_rng(seed)
    n_users = max(p.min_users, impressions // p.impressions_per_user)
    n_items = max(p.min_items, impressions // p.impressions_per_item)
    world = _make_world(rng, p, n_items)
    users = _make_users(rng, p, n_users, world)
    sessions = _make_sessions(rng, p, impressions, seed, test_fraction, users)
    imp = _make_impressions(rng, p, world, users, sessions)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    user_lines = _user_lines(users)
    item_tok = _item_tokens(world)
    combos = _combo_tokens(world, imp)
    for split in SPLITS:
        _write_split(out, split, sessions, imp, user_lines, item_tok, combos)
    if action_label:
        _write_actions(out, p, seed, sessions, imp)
    summary = {split: _split_summary(sessions, imp, split == "test") for split in SPLITS}
    meta = {
        "impressions": impressions,
        "seed": seed,
        "test_fraction": test_fraction,
        "populations": {
            "users": n_users,
            "items": n_items,
            "sessions": len(sessions.length),
            "categories": p.categories,
            "shops": p.shops,
            "brands": p.brands,
            "intents": p.intents,
            "scenes": p.scenes,
        },
        "rates": {
            "target_ctr": p.target_ctr,
            "target_cvr": p.target_cvr,
            "ctr": _rounded(imp.click.mean()),
            "cvr": _rounded(imp.conv.sum() / max(imp.click.sum(), 1)),
            "intercepts": imp.intercepts,
        },
        "params": dataclasses.asdict(p),
        "summary": summary,
    }
    (out / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary


# Named regimes for the model comparison (`--preset`; `--set` applies on top).
PRESETS: dict[str, dict[str, float]] = {
    # the default click model, conversions scarcer: the tasks depend on different factors
    "independent": {"target_cvr": 0.05},
    # the tasks share factors (items that draw clicks convert, relevant impressions convert)
    # and clicks are scarce per item: the sample selection bias and data sparsity of the paper
    "shared": {
        "target_ctr": 0.02,
        "target_cvr": 0.15,
        "w_conv_relevance": 1.0,
        "quality_attract_corr": 0.8,
        "sd_item_quality": 1.0,
        "sd_item_attract": 1.0,
        "impressions_per_item": 200,
    },
}


def with_overrides(p: Params, overrides: dict[str, float]) -> Params:
    numeric = {
        f.name: type(getattr(p, f.name))
        for f in dataclasses.fields(p)
        if isinstance(getattr(p, f.name), int | float)
    }
    unknown = set(overrides) - set(numeric)
    if unknown:
        raise ValueError(
            f"unknown generator parameters {sorted(unknown)}; numeric ones: {sorted(numeric)}"
        )
    return dataclasses.replace(p, **{k: numeric[k](v) for k, v in overrides.items()})


def _override(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--impressions", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named regime of parameters (PRESETS); --set overrides apply on top",
    )
    ap.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a numeric generator parameter (see Params), e.g. target_cvr=0.03",
    )
    ap.add_argument(
        "--action-label",
        action="store_true",
        help="also write action_{train,test}.csv: a post-click action label (for ESM2)",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        summary = generate(
            args.out,
            args.impressions,
            args.seed,
            args.test_fraction,
            {**PRESETS.get(args.preset, {}), **dict(args.set)},
            args.action_label,
        )
    except ValueError as e:
        ap.error(str(e))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
