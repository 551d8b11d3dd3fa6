"""create_app(settings): load -> warm -> serve -> close."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service import fusion
from service.config import Settings
from service.engine import Engine, newest_version
from service.errors import ClientError, ServiceError
from service.metrics import Metrics
from service.ranking import Ranker
from service.routes import json_response, router
from service.schemas import RankRequest
from service.user_cache import LocalLRU, RedisTier, UserCache

log = logging.getLogger("service")


def create_app(settings: Settings, ranker_cls: type[Ranker] = Ranker) -> FastAPI:
    """The app; `ranker_cls` is swapped only by the benchmark's naive baseline."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        st = app.state
        engine = Engine(
            newest_version(settings.model_dir), settings.providers, settings.intra_op_threads
        )
        engine.warm()
        redis = (
            RedisTier(settings.redis_url, settings.redis_timeout_ms, settings.cache_ttl_s)
            if settings.redis_url
            else None
        )
        cache = UserCache(
            engine.version,
            engine.repr_dim,
            LocalLRU(settings.cache_size, settings.cache_ttl_s),
            redis,
            st.metrics.on_cache,
        )
        default = fusion.FusionParams(
            settings.fusion_policy, settings.fusion_a, settings.fusion_b, settings.fusion_c
        )
        st.ranker = ranker_cls(
            engine,
            cache,
            default,
            (settings.fusion_min, settings.fusion_max),
            settings.max_batch_rows,
            settings.max_candidates,
            settings.default_timeout_ms,
            st.metrics.on_run,
        )
        st.ranker.start()
        st.metrics.queue_rows.set_function(lambda: st.ranker.batcher.pending_rows)
        st.engine, st.ready = engine, True
        log.info(
            "serving %s on %s (redis tier: %s)",
            engine.version,
            engine.providers,
            "on" if redis else "off",
        )
        try:
            yield
        finally:
            st.ready = False
            await st.ranker.close()
            if redis is not None:
                await redis.close()

    app = FastAPI(
        title="ranker",
        version="0.1.0",
        lifespan=lifespan,
        description="ESMM ranking: pCTR, pCVR, pCTCVR and a fusion score per "
        "candidate, user representation computed once and cached.",
    )
    app.state.settings, app.state.metrics, app.state.ready = settings, Metrics(), False
    app.include_router(router)
    _install_error_handlers(app)
    _install_openapi(app)
    return app


def _error(app: FastAPI, status: int, type_: str, message: str, field: str | None = None):
    app.state.metrics.responses.labels(str(status)).inc()
    return json_response({"error": {"type": type_, "message": message, "field": field}}, status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError):
        if not isinstance(e, ClientError) and e.status >= 500 and e.status not in (503, 504):
            log.error("service error: %s", e.message)
        return _error(app, e.status, e.type, e.message, e.field)

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: ValidationError | RequestValidationError):
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            return _error(app, 422, "malformed_json", f"malformed JSON: {first.get('msg')}")
        msg = f"{loc or 'body'}: {first.get('msg')}"
        if len(e.errors()) > 1:
            msg += f" (and {len(e.errors()) - 1} more)"
        return _error(app, 422, "invalid_request", msg, loc or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(app, 500, "internal", "internal error")


def _install_openapi(app: FastAPI) -> None:
    """/rank parses its body itself (for speed); the schema still goes into the document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = original()
            schema = RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            defs = schema.pop("$defs", {})
            doc.setdefault("components", {}).setdefault("schemas", {}).update(
                {**defs, "RankRequest": schema}
            )
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
