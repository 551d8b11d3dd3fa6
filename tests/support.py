"""Helpers shared by the service tests: /rank bodies built from a model's stored sample rows, and
the app served over real HTTP from a thread."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import uvicorn

from loadtest.harness import free_port
from service.config import Settings
from service.main import create_app


def entity(contract, side, ids, vals) -> dict:
    out = {}
    for f, cols in contract.columns(side):
        i, v = ids[cols], vals[cols]
        keep = i >= 0
        if keep.any():
            out[f.name] = {"ids": i[keep].tolist(), "weights": v[keep].tolist()}
    return out


def request_for(contract, s, user: int, **extra) -> tuple[dict, np.ndarray]:
    """A /rank body for sample user `user` with its sample rows as candidates (item_id = row)."""
    rows = np.flatnonzero(s["row_user"] == user)
    body = {
        "user_id": f"u{user}",
        "user_features": entity(contract, "user", s["user_ids"][user], s["user_vals"][user]),
        "candidates": [
            {
                "item_id": int(r),
                "price": 1.0 + r % 7,
                "features": entity(contract, "item", s["item_ids"][r], s["item_vals"][r]),
            }
            for r in rows
        ],
        **extra,
    }
    return body, rows


@contextmanager
def serving(**settings):
    """create_app(Settings(**settings)) under uvicorn on a free port, in a thread: (url, app)."""
    port = free_port()
    app = create_app(Settings(port=port, **settings))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
