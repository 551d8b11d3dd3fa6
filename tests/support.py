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

from loadtest.harness import free_port
from service.config import Settings
from service.main import create_app
from service.server import server_config


def entity(contract, side, ids, vals) -> dict:
    """A raw row's id fields as request features (numeric fields: `numbers`)."""
    out = {}
    for f, cols in contract.columns(side):
        if f.numeric:
            continue
        i, v = ids[cols], vals[cols]
        keep = i >= 0
        if keep.any():
            out[f.name] = {"ids": i[keep].tolist(), "weights": v[keep].tolist()}
    return out


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
