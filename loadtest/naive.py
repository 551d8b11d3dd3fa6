"""python -m loadtest.naive: the naive baseline of `make bench`, what a server without the
service's design does. Not part of the service: it only imports its pieces.

Every request runs the full single-graph model with the user's rows tiled onto every candidate:
no user cache, no cross-request batching, no split into user tower and item scorer. Everything
else is the real service's: the same settings (RANKER_*), request decoding and rules, feature
encoding, fusion, response, error mapping, request-id middleware and uvicorn configuration, and
the same threads (decoding off the event loop, as the service does for bodies of the
benchmark's size, and one thread running every ONNX graph), so the benchmark compares the
serving design alone.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response

from service import fusion, request
from service.__main__ import load_settings
from service.config import Settings
from service.encoding import Encoded, RequestEncoder
from service.engine import Engine, Scores
from service.errors import NotReady
from service.handlers import install_error_handlers
from service.model_folder import newest_version
from service.requestid import RequestIdMiddleware
from service.response import json_response, order_of, ranked
from service.server import server_config

log = logging.getLogger("loadtest.naive")


def score_tiled(engine: Engine, rows: Encoded) -> Scores:
    """The full graph on the user's row repeated once per candidate."""
    n = len(rows.item_ids)
    tiled = np.repeat(rows.user_ids, n, 0), np.repeat(rows.user_weights, n, 0)  # (n, user width)
    return engine.score_full(*tiled, rows.item_ids, rows.item_weights)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        st, s = app.state, settings
        st.engine = await asyncio.to_thread(
            Engine, newest_version(s.model_dir), s.providers, s.intra_op_threads
        )
        await asyncio.to_thread(st.engine.warm)
        st.encoder, st.rules = RequestEncoder(st.engine.contract), request.Rules.from_settings(s)
        st.onnx = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        st.workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        st.ready = True
        log.info("naive baseline serving %s", st.engine.version)
        try:
            yield
        finally:
            st.ready = False
            st.onnx.shutdown(wait=True)
            st.workers.shutdown(wait=True)

    app = FastAPI(title="ranker (naive baseline)", lifespan=lifespan)
    app.state.ready = False

    def prepare(body: bytes) -> tuple[request.Ranking, Encoded]:
        r = request.decode(body, app.state.rules)
        return r, app.state.encoder.encode(r.req, r.price)

    @app.post("/rank")
    async def rank(req: Request) -> Response:
        st = app.state
        if not st.ready:
            raise NotReady("the model is not loaded yet")
        loop = asyncio.get_running_loop()
        r, rows = await loop.run_in_executor(st.workers, prepare, await req.body())
        price = r.prices()  # no item table here: the request's prices only
        scores = await loop.run_in_executor(st.onnx, score_tiled, st.engine, rows)
        fused = fusion.score(r.fusion, scores.pctr, scores.pcvr, price)
        item_ids = r.req.item_keys()
        return json_response(
            ranked(
                st.engine.version,
                False,
                r.fusion,
                item_ids,
                scores,
                fused,
                order_of(fused, r.req.top_k),
            )
        )

    @app.get("/readyz")
    async def readyz() -> Response:
        if not app.state.ready:
            raise NotReady("not ready: loading")
        return json_response({"status": "ready", "model_version": app.state.engine.version})

    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, access_log=False)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    settings = load_settings()
    uvicorn.Server(server_config(create_app(settings), settings, log_level="warning")).run()


if __name__ == "__main__":
    main()
