"""The synthetic population: categories and the shops, brands and intents grouped under them,
items with their latent attractiveness and quality, and users with their attributes and
behaviour lists (drawn once, repeated in every one of their sessions)."""

from __future__ import annotations

import dataclasses

import numpy as np

from training.synthetic.params import Params

MAX_COUNT = 20  # a behaviour count is capped here (the value of a 109_14 ... 150_14 feature)


# ---- small numeric helpers -----------------------------------------------------------------
def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf popularity over a random permutation, so popularity is unrelated to the id."""
    w = (rng.permutation(n) + 1.0) ** -exponent
    return w / w.sum()


def lognormal_int(
    rng: np.random.Generator, n: int, median: float, sigma: float, lo: int, hi: int
) -> np.ndarray:
    return np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(n))), lo, hi).astype(
        np.int64
    )


def standardised(rng: np.random.Generator, n: int) -> np.ndarray:
    """n normal draws rescaled to mean 0, sd 1: with a handful of levels (scenes, user classes)
    raw draws would make the oracle AUC swing from seed to seed."""
    z = rng.standard_normal(n)
    return (z - z.mean()) / z.std()


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == query] per query (keys sorted), 0 where the key is absent."""
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


# ---- catalogues ----------------------------------------------------------------------------
@dataclasses.dataclass
class Members:
    """A universe (shops, brands, ...) grouped by category, to draw members of given categories."""

    cat: np.ndarray
    weight: np.ndarray
    order: np.ndarray
    cum: np.ndarray
    first: np.ndarray
    end: np.ndarray

    @classmethod
    def build(cls, cat: np.ndarray, weight: np.ndarray, n_cat: int) -> Members:
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


def _universe(rng: np.random.Generator, n: int, cat_weight: np.ndarray) -> Members:
    """n members spread over categories by category popularity, every category owning one."""
    n_cat = len(cat_weight)
    cat = np.concatenate([np.arange(n_cat), rng.choice(n_cat, size=n - n_cat, p=cat_weight)])
    return Members.build(cat, np.exp(rng.standard_normal(n)), n_cat)


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
class Items:
    cat: np.ndarray
    shop: np.ndarray
    brand: np.ndarray
    intent_ptr: np.ndarray
    intent: np.ndarray
    pop: np.ndarray
    attract: np.ndarray
    quality: np.ndarray
    price_rel: np.ndarray  # log price above the category's, in standard deviations
    price: np.ndarray  # the item table's price


@dataclasses.dataclass
class World:
    """Categories, attribute universes, items and their latents."""

    cats: Members
    cat_tier: np.ndarray
    cat_appeal: np.ndarray
    shops: Members
    shop_rep: np.ndarray
    brands: Members
    brand_quality: np.ndarray
    intents: Members
    items: Items


def _make_items(
    rng: np.random.Generator,
    p: Params,
    n: int,
    cats: Members,
    shops: Members,
    brands: Members,
    intents: Members,
    cat_tier: np.ndarray,
    extra: np.random.Generator,
) -> Items:
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
    price_rel = extra.standard_normal(n)
    return Items(
        cat=cat,
        shop=shops.draw(rng, cat),
        brand=brands.draw(rng, cat),
        intent_ptr=np.r_[0, np.cumsum(np.bincount(int_owner, minlength=n))],
        intent=intent,
        pop=_zipf_weights(rng, n, p.item_zipf),
        attract=p.sd_item_attract * attract,
        quality=p.sd_item_quality * quality,
        price_rel=price_rel,
        # a category's price tier sets its level (tiers 0..3: about 20 to 120), items spread
        # around it by a factor of about 1.65 (log-sd 0.5)
        price=np.round(np.exp(3.0 + 0.6 * cat_tier[cat] + 0.5 * price_rel), 2),
    )


def make_world(
    rng: np.random.Generator, p: Params, n_items: int, extra: np.random.Generator
) -> World:
    """`extra` draws what later versions added (brand quality, prices), so `rng`'s stream, and
    every data set made before them, stays as it was."""
    cat_w = _zipf_weights(rng, p.categories, p.category_zipf)
    cats = Members.build(np.arange(p.categories), cat_w, p.categories)
    shops, brands, intents = (_universe(rng, n, cat_w) for n in (p.shops, p.brands, p.intents))
    cat_tier = rng.integers(0, 4, p.categories)
    cat_appeal = p.sd_category_appeal * rng.standard_normal(p.categories)
    shop_rep = p.sd_shop_reputation * rng.standard_normal(p.shops)
    return World(
        cats=cats,
        cat_tier=cat_tier,
        cat_appeal=cat_appeal,
        shops=shops,
        shop_rep=shop_rep,
        brands=brands,
        brand_quality=p.sd_brand_quality * extra.standard_normal(p.brands),
        intents=intents,
        items=_make_items(rng, p, n_items, cats, shops, brands, intents, cat_tier, extra),
    )


# ---- users ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Behaviour:
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
class Users:
    n: int
    home: np.ndarray  # (n, home_categories)
    singles: dict[str, np.ndarray]  # field -> local value id, -1 = absent
    propensity: np.ndarray
    pop: np.ndarray
    lists: dict[str, Behaviour]


def _behaviour(
    rng: np.random.Generator, p: Params, spec: tuple, universe: Members, home: np.ndarray
) -> Behaviour:
    field, median, sigma, lo, hi = spec
    n_users = len(home)
    length = lognormal_int(rng, n_users, median, sigma, lo, hi)
    owner = np.repeat(np.arange(n_users), 2 * length + 8)  # oversampled: duplicates are dropped
    at_home = rng.random(len(owner)) < p.home_draw_share
    pick = home[owner, rng.integers(0, home.shape[1], len(owner))]
    member = universe.draw(rng, np.where(at_home, pick, -1))
    user, member = _distinct(owner, member, length, len(universe))
    # Members of the user's home categories were acted on far more often.
    is_home = (home[user] == universe.cat[member][:, None]).any(axis=1)
    count = rng.geometric(0.5, len(user)) + is_home * rng.geometric(0.15, len(user))
    return Behaviour(field, len(universe), user, member, np.minimum(count, MAX_COUNT))


def make_users(rng: np.random.Generator, p: Params, n: int, w: World) -> Users:
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
    class_effect = p.sd_user_class * standardised(rng, p.user_classes)
    propensity = class_effect[cls] + p.sd_user_propensity * rng.standard_normal(n)
    return Users(
        n=n,
        home=home,
        singles=singles,
        propensity=propensity,
        pop=_zipf_weights(rng, n, p.user_zipf),
        lists=lists,
    )
