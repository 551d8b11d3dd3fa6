"""Realistic /rank requests drawn from the generator's distributions (numpy only, no locust),
so pytest can check them without importing locust and its gevent patches.

Users are Zipf-distributed (a few heavy users, a long tail: caches hit and miss as in
production) and keep their features between requests; candidate counts are log-normal between
50 and 1000 around a median of 300; a fraction of requests override the fusion parameters.

Bodies speak Ali-CCP's field numbers, or (`names=True`) the feature names of the generator's
named tables (training/synthetic/tables.py: the spec the default model is trained by), with the
same ids where the tables hold the same (`to_names`); `by_ids` makes either an id-only request.
A user id below the generator's user count and an item id below its item count are ones the
default model's stores hold (`make train`: 5000 users, 7500 items).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from features.values import text_id
from training.generate import FIELD_BASE, Params
from training.synthetic import tables as named

# Ali-CCP field -> the generator spec's feature name (tables.py); combination fields have none:
# the spec's crosses are computed by the service
NAMES = {
    "101": "user_id",
    **{field: name for name, field in named.USER_ATTRIBUTES},
    **{field: name for name, field, _, _ in named.USER_LISTS},
    "205": "item_id",
    "206": "category",
    "207": "shop",
    "216": "brand",
    "210": "intents",
    "301": "scene",
}
KEYS = ("101", "205")  # the tables keep these ids as they are; the others lose FIELD_BASE

P = Params()
SINGLE_USER = {
    "101": None,
    "121": P.user_classes,
    "122": 20,
    "124": 2,
    "125": 7,
    "126": 3,
    "127": 3,
    "128": 10,
    "129": 30,
}
POPULATION = {"109_14": P.categories, "110_14": P.shops, "127_14": P.brands, "150_14": P.intents}


class Traffic:
    def __init__(
        self,
        seed: int = 0,
        users: int = 5000,
        items: int = 20000,
        zipf: float = 1.1,
        fusion_share: float = 0.2,
        names: bool = False,
    ):
        self.names = names
        self.rng = np.random.default_rng(seed)
        self.n_users, self.zipf, self.fusion_share = users, zipf, fusion_share
        self._users: dict[int, dict] = {}
        rng = self.rng
        self.items = {
            "205": FIELD_BASE["205"] + np.arange(items),
            "206": FIELD_BASE["206"] + rng.integers(0, P.categories, items),
            "207": FIELD_BASE["207"] + rng.integers(0, P.shops, items),
            "216": FIELD_BASE["216"] + rng.integers(0, P.brands, items),
        }
        self.price = np.round(rng.lognormal(3.0, 1.0, items), 2)
        w = 1.0 / np.arange(1, users + 1) ** zipf
        self.user_p = w / w.sum()

    def user(self, uid: int) -> dict:
        """The same features every time a user comes back (so its cache entry stays valid)."""
        if uid not in self._users:
            rng = np.random.default_rng(uid)
            feats: dict = {
                name: int(FIELD_BASE[name] + (uid if n is None else rng.integers(n)))
                for name, n in SINGLE_USER.items()
            }
            for name, median, sigma, lo, hi in P.list_lengths:
                k = int(np.clip(median * np.exp(sigma * rng.standard_normal()), lo, hi))
                ids = FIELD_BASE[name] + rng.choice(
                    POPULATION[name], size=min(k, POPULATION[name]), replace=False
                )
                counts = np.minimum(rng.geometric(0.35, size=len(ids)), 20).astype(float)
                feats[name] = {"ids": ids.tolist(), "weights": counts.tolist()}
            self._users[uid] = feats
        return self._users[uid]

    def candidates(self) -> int:
        return int(np.clip(np.rint(300 * np.exp(0.6 * self.rng.standard_normal())), 50, 1000))

    def request(self, user: int | None = None, candidates: int | None = None) -> dict:
        """One body: a user drawn by popularity and a drawn number of candidates, or the ones
        given (the benchmark's fixed shape: the same few users, 500 candidates each)."""
        rng = self.rng
        uid = int(rng.choice(self.n_users, p=self.user_p)) if user is None else user
        n = self.candidates() if candidates is None else candidates
        rows = rng.choice(len(self.price), size=n, replace=False)
        cands = [
            {
                "item_id": int(r),
                "price": float(self.price[r]),
                "features": {
                    **{k: int(v[r]) for k, v in self.items.items()},
                    "210": (FIELD_BASE["210"] + rng.integers(0, P.intents, 2)).tolist(),
                },
            }
            for r in rows
        ]
        body = {
            "user_id": uid,
            "user_features": self.user(uid),
            "context_features": {"301": int(FIELD_BASE["301"] + rng.integers(P.scenes))},
            "candidates": cands,
        }
        if rng.random() < self.fusion_share:
            body["fusion"] = {
                "a": float(rng.uniform(0.5, 1.5)),
                "b": float(rng.uniform(0.5, 2)),
                "c": float(rng.uniform(0, 0.5)),
            }
        return to_names(body) if self.names else body

    def item_table(self):
        """Its items as an item table (features/items.py) with their prices and two intents
        each (drawn apart: the requests' draws stay as they were), for ranking by ids; by the
        spec's names with names=True."""
        from features.contract import FeatureContract
        from features.items import ItemTable

        if self.names:
            return self._named_table()
        contract = FeatureContract.default()
        cols = {f.name: c for f, c in contract.columns("item")}
        n = len(self.price)
        ids = np.full((n, contract.width("item")), -1, dtype=np.int64)
        vals = np.zeros(ids.shape, dtype=np.float32)
        for name, col in self.items.items():
            ids[:, cols[name].start], vals[:, cols[name].start] = col, 1.0
        start = cols["210"].start
        rng = np.random.default_rng(12345)
        ids[:, start : start + 2] = FIELD_BASE["210"] + rng.integers(0, P.intents, (n, 2))
        vals[:, start : start + 2] = 1.0
        return ItemTable.from_rows(contract, ids, vals, self.price, "loadtest/traffic.py")

    def _named_table(self):
        from features.items import ItemTable

        n = len(self.price)
        rng = np.random.default_rng(12345)
        intents = rng.integers(0, P.intents, (n, 2))
        cols = [self.items[f] - (0 if f in KEYS else FIELD_BASE[f]) for f in self.items]
        ids = np.full((n, len(cols) + named.INTENTS_MAX_LEN), -1, dtype=np.int64)
        ids[:, : len(cols)] = np.stack(cols, axis=1)
        ids[:, len(cols) : len(cols) + 2] = intents
        vals = (ids >= 0).astype(np.float32)
        max_len = {NAMES[f]: 1 for f in self.items} | {"intents": named.INTENTS_MAX_LEN}
        return ItemTable(
            self.items["205"], ids, vals, self.price.astype(np.float64), max_len, "traffic"
        )


def _value(field: str, v):
    """One Ali-CCP feature value as the named tables hold it."""
    base = 0 if field in KEYS else FIELD_BASE[field]
    if isinstance(v, int):
        v -= base
        if field == "124":
            return named._names(named.GENDER_NAMES, v + 1, "gender")[v]
        if field == "301":
            return named._names(named.SCENE_NAMES, v + 1, "scene")[v]
        return v
    if isinstance(v, dict):
        return {"ids": [i - base for i in v["ids"]], "weights": v["weights"]}
    return [i - base for i in v]


def to_names(body: dict) -> dict:
    """An Ali-CCP-field body as the same request by the generator spec's feature names
    (combination fields dropped: the spec's crosses are computed from both sides)."""
    out = dict(body)
    for key in ("user_features", "context_features"):
        if key in body:
            out[key] = {NAMES[f]: _value(f, v) for f, v in body[key].items() if f in NAMES}
    if "candidates" in body:
        out["candidates"] = [
            {
                **c,
                "features": {
                    NAMES[f]: _value(f, v) for f, v in c["features"].items() if f in NAMES
                },
            }
            for c in body["candidates"]
        ]
    return out


def speaks_names(version: Path) -> bool:
    """Whether a model version folder's model reads a spec's names (its manifest's contract has
    keys), so its traffic must be Traffic(names=True)."""
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    return manifest["feature_contract"].get("keys") is not None


def by_ids(body: dict) -> dict:
    """The same request with its candidates named by item id alone (field 205, or a spec's
    item_id)."""
    out = {k: v for k, v in body.items() if k != "candidates"}
    key = "item_id" if "item_id" in body["candidates"][0]["features"] else "205"
    return out | {"item_ids": [c["features"][key] for c in body["candidates"]]}


def raw_features(feats: dict) -> dict:
    """Request user_features -> the store's raw {feature: (ids, values)} (features/users.py):
    a text id as its raw id (features/values.py)."""
    out = {}
    for name, v in feats.items():
        if isinstance(v, (int, str)):
            out[name] = ([text_id(v) if isinstance(v, str) else v], [1.0])
        elif isinstance(v, dict):
            out[name] = (v["ids"], v.get("weights") or [1.0] * len(v["ids"]))
        else:
            out[name] = (list(v), [1.0] * len(v))
    return out
