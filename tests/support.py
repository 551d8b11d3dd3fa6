"""Helpers shared by the service tests: /rank bodies built from a model's stored sample rows, and
the app served over real HTTP from a thread."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import uvicorn
from fastapi.testclient import TestClient

from loadtest.parts import free_port
from ranker.replay import request_features
from service.config import Settings
from service.main import create_app
from service.server import server_config


def entity(contract, side, ids, vals) -> dict:
    """A raw row's id fields as request features (numeric fields: `numbers`)."""
    raw = contract.decode_entity(side, ids, vals, lambda f: not f.numeric)
    return request_features(raw)


def numbers(contract, ids, vals) -> dict:
    """A raw item row's known numeric attributes by name (ranker train --items)."""
    return {
        f.name: float(vals[c.start])
        for f, c in contract.columns("item")
        if f.numeric and ids[c.start] >= 0
    }


def candidate(contract, s, r: int) -> dict:
    """Sample row `r` as a candidate (item_id = r): its features, and its price (a model's
    numeric `price` where it has one, else 1 to 7) and other numeric attributes."""
    nums = numbers(contract, s["item_ids"][r], s["item_vals"][r])
    out = {
        "item_id": int(r),
        "price": nums.pop("price", 1.0 + r % 7),
        "features": entity(contract, "item", s["item_ids"][r], s["item_vals"][r]),
    }
    if nums:
        out["attributes"] = nums
    return out


def request_for(contract, s, user: int, **extra) -> tuple[dict, np.ndarray]:
    """A /rank body for sample user `user` with its sample rows as candidates (item_id = row)."""
    rows = np.flatnonzero(s["row_user"] == user)
    body = {
        "user_id": f"u{user}",
        "user_features": entity(contract, "user", s["user_ids"][user], s["user_vals"][user]),
        "candidates": [candidate(contract, s, int(r)) for r in rows],
        **extra,
    }
    return body, rows


@contextmanager
def serving(**settings):
    """create_app(Settings(**settings)) under uvicorn, configured as the service runs it, on a
    free port, in a thread: (url, app)."""
    port = free_port()
    s = Settings(port=port, **settings)
    app = create_app(s)
    srv = uvicorn.Server(server_config(app, s, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise TimeoutError("the app did not become ready")
        yield url, app
    finally:
        srv.should_exit = True
        t.join(30)


def raw_exchange(url: str, data: bytes, wait_s: float = 5.0) -> httpx.Response:
    """Send `data` as it is (a request head, part of a body...) on one connection and read
    what the server answers until it closes or `wait_s` passes: for clients that misbehave."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(data)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = [tuple(x.split(": ", 1)) for x in lines[1:] if ": " in x]
    return httpx.Response(status, headers=headers, content=body)


TOKEN = "s3cret-token-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def encoded(bodies: list[dict]) -> list[bytes]:
    return [json.dumps(b).encode() for b in bodies]


def reference(model_dir, bodies: list[dict]) -> list[dict]:
    """item id -> pctcvr of each body, as the model in `model_dir` scores it."""
    with TestClient(create_app(Settings(model_dir=model_dir))) as c:
        return [
            {it["item_id"]: it["pctcvr"] for it in c.post("/rank", json=b).json()["items"]}
            for b in bodies
        ]


# ---- a shop's own tables, shaped unlike the generator's ---------------------------------------
SHOP_SPEC = """\
# A shop's own logs: text keys, a device and an hour per request, a numeric user attribute,
# weighted brand lists sharing one table with the item's brand, and a cross.
keys: {user: member, item: sku, request: page_view}
labels: {click: clicked, conversion: ordered}
tables:
  events: {train: ev_train.parquet, test: ev_test.parquet}
  users: members.parquet
  items: skus.parquet
price: list_price
features:
  - {name: member, side: user, kind: id, min_count: 2}
  - {name: tier, side: user, kind: id}
  - {name: age, side: user, kind: numeric, buckets: 8}
  - {name: viewed_brands, side: user, kind: ids, weights: viewed_brands_n, embedding: brand,
     max_len: 6}
  - {name: sku, side: item, kind: id}
  - {name: brand, side: item, kind: id, embedding: brand}
  - {name: tags, side: item, kind: ids, max_len: 3, pooling: sum}
  - {name: rating, side: item, kind: numeric}
  - {name: device, side: context, kind: id}
  - {name: hour, side: context, kind: numeric, buckets: 6}
  - {name: brand_affinity, side: cross, count_in: {list: viewed_brands, key: brand}}
"""


def write_shop(folder, events: int = 8000, seed: int = 0):
    """A shop's tables and spec in `folder` (returns the spec's path): clicks follow the
    member's affinity for the item's brand and the device, orders the rating."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_members, n_skus, n_brands = 400, 300, 20
    brands = [f"brand-{k}" for k in range(n_brands)]
    lists, weights = [], []
    for _ in range(n_members):
        k = int(rng.integers(0, 10))
        lists.append(rng.choice(brands, size=k, replace=False).tolist())
        weights.append(rng.integers(1, 9, size=k).astype(float).tolist())
    members = pa.table(
        {
            "member": [f"m-{k}" for k in range(n_members)],
            "tier": rng.choice(["gold", "silver", None], n_members).tolist(),
            "age": pa.array(
                np.where(rng.random(n_members) < 0.1, np.nan, rng.integers(18, 80, n_members))
            ),
            "viewed_brands": pa.array(lists, pa.list_(pa.string())),
            "viewed_brands_n": pa.array(weights, pa.list_(pa.float64())),
        }
    )
    sku_brand = rng.integers(0, n_brands, n_skus)
    skus = pa.table(
        {
            "sku": [f"sku-{k}" for k in range(n_skus)],
            "brand": [brands[b] for b in sku_brand],
            "tags": pa.array(
                [rng.integers(0, 50, int(rng.integers(0, 5))).tolist() for _ in range(n_skus)],
                pa.list_(pa.int64()),
            ),
            "rating": rng.uniform(1, 5, n_skus).round(1),
            "list_price": rng.uniform(5, 200, n_skus).round(2),
        }
    )
    (folder / "spec.yaml").write_text(SHOP_SPEC)
    pq.write_table(members, folder / "members.parquet")
    pq.write_table(skus, folder / "skus.parquet")
    for split, n in (("train", events), ("test", events // 3)):
        m = rng.integers(0, n_members, n)
        s = rng.integers(0, n_skus, n)
        device = rng.choice(["ios", "android", "web"], n)
        affinity = np.array(
            [
                sum(
                    w
                    for b, w in zip(lists[a], weights[a], strict=True)
                    if b == brands[sku_brand[i]]
                )
                for a, i in zip(m, s, strict=True)
            ]
        )
        logit = -2.5 + 0.4 * affinity + (device == "ios") * 0.5
        click = rng.random(n) < 1 / (1 + np.exp(-logit))
        order = click & (rng.random(n) < skus["rating"].to_numpy()[s] / 12)
        pq.write_table(
            pa.table(
                {
                    "page_view": [f"pv-{split}-{k // 5}" for k in range(n)],
                    "member": [f"m-{k}" for k in m],
                    "sku": [f"sku-{k}" for k in s],
                    "clicked": click.astype(np.int8),
                    "ordered": order.astype(np.int8),
                    "device": device.tolist(),
                    "hour": rng.integers(0, 24, n).astype(np.int32),
                }
            ),
            folder / f"ev_{split}.parquet",
        )
    return folder / "spec.yaml"
