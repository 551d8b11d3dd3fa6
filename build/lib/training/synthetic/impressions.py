"""Sessions and impressions over the population, and their labels: the planted click and
conversion logits (training/generate.py's docstring), intercepts solved for the target rates,
labels drawn from exactly the probabilities written to truth_{split}.csv, and the optional
post-click action label."""

from __future__ import annotations

import dataclasses

import numpy as np

from features.contract import splitmix64
from training.synthetic.params import Params
from training.synthetic.world import Members, Users, World, lognormal_int, standardised


# ---- sessions ------------------------------------------------------------------------------
@dataclasses.dataclass
class Sessions:
    user: np.ndarray
    length: np.ndarray
    scene: np.ndarray
    test: np.ndarray  # bool
    index: list[str]  # common_feature_index


def _session_index(seed: int, n: int) -> list[str]:
    """Unique 16-hex-digit ids: the feature contract's splitmix64 is a bijection of uint64, so
    distinct inputs give distinct ids."""
    high = np.uint64((seed * 0x9E3779B1) & 0xFFFFFFFF) * np.uint64(1 << 32)
    return [f"{v:016x}" for v in splitmix64(np.arange(n, dtype=np.uint64) + high).tolist()]


def make_sessions(
    rng: np.random.Generator,
    p: Params,
    impressions: int,
    seed: int,
    test_fraction: float,
    users: Users,
) -> Sessions:
    length = lognormal_int(rng, impressions // 5 + 1, p.session_median, 0.55, 5, 40)
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
    return Sessions(
        user=rng.choice(users.n, size=n, p=users.pop),
        length=length,
        scene=rng.choice(p.scenes, size=n, p=scene_p / scene_p.sum()),
        test=test,
        index=_session_index(seed, n),
    )


# ---- impressions and labels ---------------------------------------------------------------
@dataclasses.dataclass
class Impressions:
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
    rng: np.random.Generator, p: Params, w: World, users: Users, user: np.ndarray
) -> np.ndarray:
    """A recommender's mix: some impressions from the user's home categories, the rest by item
    popularity."""
    n = len(user)
    items = w.items
    targeted = rng.random(n) < p.targeted_share
    pick = users.home[user, rng.integers(0, users.home.shape[1], n)]
    grouped = Members.build(items.cat, items.pop, p.categories)
    return grouped.draw(rng, np.where(targeted, pick, -1))


def _intent_matches(
    w: World, users: Users, user: np.ndarray, item: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = w.items
    per = np.diff(items.intent_ptr)[item]
    imp = np.repeat(np.arange(len(item)), per)
    offset = np.arange(len(imp)) - np.repeat(np.cumsum(per) - per, per)
    intent = items.intent[items.intent_ptr[item][imp] + offset]
    count = users.lists["150_14"].count_of(user[imp], intent)
    hit = count > 0
    return imp[hit], intent[hit], count[hit]


def make_impressions(
    rng: np.random.Generator, p: Params, w: World, users: Users, s: Sessions
) -> Impressions:
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
    scene_effect = p.sd_scene * standardised(rng, p.scenes)
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
    return Impressions(
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
    p: Params, w: World, users: Users, user: np.ndarray, item: np.ndarray, n702: np.ndarray
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
        + w.brand_quality[it.brand[item]]
        - p.w_item_price * it.price_rel[item]
    )


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


def _quantise(prob: np.ndarray) -> np.ndarray:
    """Round to the 8 decimals written to truth_*.csv, so labels come from the written values."""
    return np.round(np.clip(prob, 1e-6, 1 - 1e-6), 8)


def draw_actions(p: Params, seed: int, imp: Impressions) -> np.ndarray:
    """The post-click action (cart, wish) of every impression: clicked impressions take one with
    a probability that depends on whether they convert, so the action carries signal about the
    purchase. Its own random stream: the other files are the same with or without it."""
    rng = np.random.default_rng(seed + 7919)
    p_act = np.where(imp.conv > 0, p.action_given_buy, p.action_given_no_buy)
    return (imp.click > 0) & (rng.random(len(imp.click)) < p_act)
