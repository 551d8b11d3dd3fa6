"""create_app(settings): load -> warm -> serve (and reload) -> drain -> close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from features.package import __version__
from features.user_table import UserTableError
from service import admin, request, tracing
from service.admission import Admission
from service.arms import Arms, ArmsError
from service.arms import watch as watch_arms
from service.config import Settings
from service.feedback import FeedbackRequest, FeedbackResponse, Outcomes
from service.handlers import install_error_handlers
from service.impressions import ImpressionLog
from service.metrics import Metrics
from service.model_folder import newest_version
from service.openapi import install_openapi
from service.ranking import Ranker
from service.redis_guard import Breaker
from service.reload import ModelLoader, Reloader
from service.request import RankRequest
from service.requestid import RequestIdMiddleware, install_log_field
from service.reservoir import Reservoir, replay
from service.response import ErrorResponse, RankResponse
from service.routes import router
from service.served import ModelSlot
from service.shared_answers import SharedAnswers
from service.user_cache import RedisTier
from service.user_store import EmbeddedUserStore, UserStore, is_redis_url

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("service")


async def watch_loop_lag(observe, every_s: float = 0.05) -> None:
    """How late a timer of the event loop fires, every `every_s`: while the loop runs one
    request's Python work, every other ready callback (a response due, the batcher's next run)
    waits that long."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(every_s)
        observe(max(0.0, loop.time() - t - every_s))


def create_app(settings: Settings, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """`tracer_provider`: where traces go with RANKER_TRACING on (default: OTLP; tests give one
    of their own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        st, s = app.state, settings
        tracing.start(provider)
        # One thread runs every ONNX graph, of every version: runs never overlap on 2 cores.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        # Large bodies are decoded and encoded here, off the event loop (ranking.py).
        workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        redis = None
        if s.redis_url:
            breaker = Breaker(s.redis_breaker_failures, s.redis_breaker_reset_s)
            redis = RedisTier(
                s.redis_url,
                s.redis_timeout_ms,
                s.cache_ttl_s,
                breaker,
                on_event=st.metrics.on_redis,
            )
        users = None
        if s.user_store and not is_redis_url(s.user_store):
            try:  # the embedded store: a user table file (`ranker users build`)
                users = EmbeddedUserStore(s.user_store, on_event=st.metrics.on_user_store)
            except UserTableError as e:
                raise SystemExit(f"RANKER_USER_STORE={s.user_store}: {e}") from None
        elif s.user_store:
            users = UserStore(
                s.user_store,
                s.user_store_timeout_ms,
                s.user_max_age_s,
                s.cache_size,
                Breaker(s.redis_breaker_failures, s.redis_breaker_reset_s),
                on_event=st.metrics.on_user_store,
            )
        loader = ModelLoader(s, executor, redis, st.metrics)
        model = await asyncio.to_thread(loader.build, newest_version(s.model_dir))
        rules = request.Rules.from_settings(s)
        reservoir = None
        if s.warm_requests > 0:  # recent requests, replayed into a version before it serves
            size = dict(size=s.warm_requests, slow=max(1, s.warm_requests // 4))
            reservoir = Reservoir.load(s.warm_file, **size) if s.warm_file else Reservoir(**size)

        def warm_up(version) -> None:
            bodies = reservoir.bodies() if reservoir is not None else []
            if not bodies:
                return
            done = replay(version, bodies, rules)
            st.metrics.warmup.labels("replayed").inc(done["replayed"])
            st.metrics.warmup.labels("skipped").inc(done["skipped"])
            log.info(
                "warm-up: %s replayed %d recent requests (%d refused) of %s candidates in %.0f ms",
                version.version,
                done["replayed"],
                done["skipped"],
                "-".join(map(str, done["candidates"] or ())) or "no",
                done["ms"],
            )

        await asyncio.to_thread(warm_up, model)  # before /readyz: the first requests find it warm
        st.slot = slot = ModelSlot(model)
        st.admission = Admission(
            s.max_queued_rows,
            lambda: slot.current.batcher.rows_per_s,
            on_refuse=lambda reason: st.metrics.shed.labels(reason).inc(),
        )
        impressions = None
        if s.log_dir is not None:
            try:
                impressions = ImpressionLog(
                    s.log_dir,
                    s.log_sample,
                    s.log_queue,
                    int(s.log_rotate_mb * (1 << 20)),
                    s.log_rotate_s,
                    on_drop=lambda reason, n: st.metrics.log_dropped.labels(reason).inc(n),
                    on_written=st.metrics.log_written.inc,
                )
            except OSError as e:  # a folder that cannot be made or written to
                raise SystemExit(f"RANKER_LOG_DIR={s.log_dir}: {e}") from None
        st.outcomes, shared = None, None
        if s.feedback_shared and s.feedback_rows > 0:
            if not s.redis_url:
                raise SystemExit(
                    "RANKER_FEEDBACK_SHARED: answers are shared in the Redis tier: set "
                    "RANKER_REDIS_URL"
                )

            def on_shared(op: str, outcome: str) -> None:  # (the cache tier has the breaker gauge)
                st.metrics.redis.labels("feedback_" + op, outcome).inc()

            shared = SharedAnswers(s.redis_url, s.redis_timeout_ms, s.feedback_window_s, on_shared)
        if s.feedback_rows > 0:
            st.outcomes = Outcomes(
                st.metrics.on_outcome, s.feedback_window_s, s.feedback_rows, shared=shared
            )
        st.reloader = Reloader(s, loader, slot, st.metrics, warm_up)

        async def prepare_arms(new: Arms, old: Arms | None = None) -> None:
            """A config's versions loaded (those of `old` it names again kept); ArmsError."""
            if new.shadow is not None and impressions is None:
                raise ArmsError(
                    f"{s.arms}: shadow: its scores are kept in the impression log: set "
                    "RANKER_LOG_DIR"
                )
            await st.reloader.attach_models(new, old)

        arms = None
        if s.arms is not None:
            try:
                arms = Arms.load(s.arms, rules)
                await prepare_arms(arms)
            except ArmsError as e:
                raise SystemExit(f"RANKER_ARMS: {e}") from None
            st.metrics.on_arms(arms)
        st.ranker = Ranker(
            slot,
            st.admission,
            rules,
            workers,
            st.metrics.candidates.observe,
            st.metrics.unknown_items.inc,
            users,
            st.metrics.unknown_users.inc,
            impressions,
            arms,
            st.metrics.on_arm,
            st.outcomes,
            st.metrics.shadow,
            reservoir,
        )
        watcher = (
            asyncio.get_running_loop().create_task(st.reloader.watch(s.reload_poll_s))
            if s.reload_poll_s > 0
            else None
        )

        def install_arms(new: Arms) -> None:
            old, st.ranker.arms = st.ranker.arms, new  # requests read it once each
            Reloader.detach_models(old, new)
            st.metrics.on_arms(new, old)

        arms_watcher = (
            asyncio.get_running_loop().create_task(
                watch_arms(
                    s.arms,
                    rules,
                    s.reload_poll_s,
                    install_arms,
                    st.metrics.on_arms_refused,
                    lambda new: prepare_arms(new, st.ranker.arms),
                )
            )
            if s.arms is not None and s.reload_poll_s > 0
            else None
        )
        st.metrics.watch_queue(lambda: st.admission.rows)
        lag = asyncio.get_running_loop().create_task(watch_loop_lag(st.metrics.loop_lag.observe))
        st.metrics.on_model(model.version)
        st.loaded = st.ready = True
        log.info(
            "serving %s on %s (redis tier: %s; user store: %s)",
            model.version,
            model.engine.providers,
            "on" if redis else "off",
            users.url if users else "off",
        )
        del model  # the slot holds it: a reload must be able to free it (tables and all)
        try:
            yield
        finally:
            st.ready, st.admission.draining = False, True
            for task in (watcher, lag, arms_watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await st.ranker.drain()  # answers waiting for a store read or the shadow: logged
            if shared is not None:
                await shared.close()
            if reservoir is not None and s.warm_file is not None:
                try:  # what the next start replays
                    await asyncio.to_thread(reservoir.save, s.warm_file)
                except OSError as e:
                    log.error("RANKER_WARM_FILE=%s not written: %s", s.warm_file, e)
            await slot.close()
            if st.ranker.arms is not None:
                for arm_slot in st.ranker.arms.slots.values():
                    await arm_slot.close()
            if impressions is not None:  # after the last answer: its files closed, renamed
                await asyncio.to_thread(impressions.close)
            executor.shutdown(wait=True)
            workers.shutdown(wait=True)
            if redis is not None:
                await redis.close()
            if users is not None:
                await users.close()
            tracing.start(None)
            if provider is not None and tracer_provider is None:
                await asyncio.to_thread(provider.shutdown)  # ours: sends the spans still batched

    # /docs from assets served by the app itself (Swagger UI 5, which renders OpenAPI 3.1): the
    # default page loads them from a CDN and is blank on a host that cannot reach one
    app = FastAPIOffline(
        static_url="/docs/assets",
        redoc_url=None,
        title="ranker",
        version=__version__,
        lifespan=lifespan,
        description="ESMM ranking: pCTR, pCVR, pCTCVR and a fusion score per "
        "candidate, user representation computed once and cached.",
    )
    app.state.settings, app.state.metrics = settings, Metrics()
    app.state.loaded = app.state.ready = False  # ready: loaded and not shutting down
    app.include_router(router)
    app.include_router(admin.router)
    install_error_handlers(app)
    install_openapi(
        app,
        [
            RankRequest,
            RankResponse,
            ErrorResponse,
            FeedbackRequest,
            FeedbackResponse,
            admin.ReloadRequest,
            admin.ReloadResponse,
        ],
        {"RankRequest": request.EXAMPLE},
    )
    install_log_field()
    provider = tracing.instrument(app, settings.tracing, tracer_provider)
    app.add_middleware(
        RequestIdMiddleware,
        access_log=settings.access_log,
        on_request=app.state.metrics.on_request,
        on_response=app.state.metrics.on_response,
    )
    return app
