"""Realistic /rank requests drawn from the generator's distributions (numpy only, no locust),
so pytest can check them without importing locust and its gevent patches.

Users are Zipf-distributed (a few heavy users, a long tail: caches hit and miss as in
production) and keep their features between requests; candidate counts are log-normal between
50 and 1000 around a median of 300; a fraction of requests override the fusion parameters.
"""

from __future__ import annotations

import numpy as np

from training.generate import FIELD_BASE, Params

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
    ):
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
        return body

    def item_table(self):
        """Its items as an item table (features/items.py) with their prices and two intents
        each (drawn apart: the requests' draws stay as they were), for ranking by ids."""
        from features.contract import FeatureContract
        from features.items import ItemTable

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


def by_ids(body: dict) -> dict:
    """The same request with its candidates named by item id alone (field 205)."""
    out = {k: v for k, v in body.items() if k != "candidates"}
    return out | {"item_ids": [c["features"]["205"] for c in body["candidates"]]}
