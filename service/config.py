"""The service's one settings object. Nothing else reads os.environ.

Every setting is an environment variable with the prefix RANKER_ (RANKER_PORT, RANKER_REDIS_URL,
...). A bad value stops the start with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="forbid", frozen=True)

    # where and what to serve
    model_dir: Path = Field(
        Path("models"),
        description="a model version folder (holding "
        "manifest.json), or a folder whose newest version is served",
    )
    item_table: Path | None = Field(
        None,
        description="an item feature table (`ranker items build`): candidates by id alone "
        "(`item_ids`), stored features under inline ones; unset: every candidate brings its own",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes on the port (service/workers.py): each its own event loop, "
        "scorer, model and item table; /metrics sums them; POST /admin/reload is off above 1",
    )
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime provider: auto takes CUDA when it really runs"
    )
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="ONNX Runtime threads per run (0: its default); the HTTP server "
        "shares the cores",
    )

    # request limits
    max_candidates: int = Field(2000, ge=1)
    max_body_bytes: int = Field(4 << 20, ge=1024)
    default_timeout_ms: int = Field(1000, ge=1, le=60_000)

    # connections: what a slow or hostile client may hold
    max_connections: int = Field(
        1024, ge=1, description="open connections and requests in flight; past it: 503"
    )
    header_timeout_s: float = Field(
        5.0, gt=0, description="a connection's request head must arrive within this"
    )
    body_timeout_s: float = Field(10.0, gt=0, description="a request body must arrive within this")
    max_header_bytes: int = Field(
        16 << 10, ge=1024, description="request line and headers; past it the connection closes"
    )

    # batching: rows from many requests in one run, and how the item scorer runs them
    max_batch_rows: int = Field(
        2048,
        ge=1,
        description="rows per item-scorer run; larger requests are split. A GPU wants thousands "
        "per run (gpu/README.md)",
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="the item scorer through ONNX Runtime I/O binding: rows copied into host "
        "buffers allocated once (page-locked with CUDA), scores written into buffers allocated "
        "once; auto: on when CUDA runs",
    )
    cuda_graph: bool = Field(
        False,
        description="replay the item scorer as CUDA graphs, one per power-of-two row bucket up "
        "to RANKER_MAX_BATCH_ROWS (a run's rows padded up to its bucket); needs CUDA and I/O "
        "binding. A graph ONNX Runtime cannot capture, or whose scores differ from a plain "
        "run's, is turned off at warm-up with a log line saying why",
    )

    # overload: admission is bounded in candidate rows admitted and not yet scored
    max_queued_rows: int = Field(
        32768,
        ge=1,
        description="candidate rows admitted and not yet scored, a memory bound; past it a "
        "request is refused at once (503, Retry-After). The usual refusal is the deadline's: "
        "rows queued that would not be scored within the request's timeout",
    )

    # model reload and shutdown
    admin_token: SecretStr | None = Field(
        None, description="bearer token of /admin/*; unset: admin endpoints refuse everyone"
    )
    reload_poll_s: float = Field(
        5.0, ge=0, description="look for a newer version under model_dir this often (0: off)"
    )
    shutdown_delay_s: float = Field(
        0.0, ge=0, description="on SIGTERM: /readyz is false this long before admission stops"
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="on SIGTERM: in-flight requests get this long to finish"
    )
    access_log: bool = Field(True, description="one log line per request, with its request id")
    arms: Path | None = Field(
        None,
        description="a YAML file of arms: users hashed with its salt into sticky buckets, each "
        "arm with its share and fusion (service/arms.py); re-read when it changes, every "
        "RANKER_RELOAD_POLL_S",
    )
    # outcomes online (service/feedback.py, docs/loop.md)
    feedback_window_s: float = Field(
        3600.0,
        gt=0,
        description="POST /feedback counts events for answers this recent; older ones are late",
    )
    feedback_shared: bool = Field(
        False,
        description="remember answers in the shared Redis tier (RANKER_REDIS_URL) too, so "
        "/feedback on any worker or replica counts an event against any answer, once "
        "(service/shared_answers.py)",
    )
    feedback_rows: int = Field(
        1_000_000,
        ge=0,
        description="answers' returned items remembered for /feedback (oldest first out; about "
        "22 bytes each); 0: no /feedback and no calibration sums",
    )
    # the impression log (service/impressions.py, docs/loop.md)
    log_dir: Path | None = Field(
        None,
        description="write what each sampled /rank answer served to Parquet files in this folder "
        "(unset: off)",
    )
    log_sample: float = Field(
        1.0,
        gt=0,
        le=1,
        description="the share of answers the impression log keeps, drawn per answer",
    )
    log_queue: int = Field(
        10_000,
        ge=1,
        description="answers waiting for the log's writer; beyond it they are dropped and "
        "counted (ranker_log_dropped_total), never waited for",
    )
    log_rotate_mb: float = Field(64.0, gt=0, description="a log file is closed at this size")
    log_rotate_s: float = Field(300.0, gt=0, description="or at this age")
    # warm-up from real requests (service/reservoir.py)
    warm_requests: int = Field(
        64,
        ge=0,
        le=10_000,
        description="recent /rank bodies kept (a uniform sample, and a quarter as many of the "
        "slowest) and replayed into a version before it serves; 0: off",
    )
    warm_file: Path | None = Field(
        None,
        description="where those bodies are saved at shutdown and read at start, so a "
        "restarted replica replays them before /readyz turns ready (unset: kept in memory)",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="json: every log line a JSON object (time, level, logger, message, and the "
        "request id within a request: service/logs.py)",
    )
    tracing: Literal["off", "otlp"] = Field(
        "off",
        description="otlp: OpenTelemetry traces of every request, the steps of /rank as child "
        "spans, sent over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the `tracing` extra); off: "
        "nothing of the extra is imported (service/tracing.py)",
    )
    gc_freeze: bool = Field(
        True,
        description="`ranker serve` freezes the objects alive at start out of the garbage "
        "collector's sight and runs young collections 10x less often (the low-load p99)",
    )

    # user cache
    cache_size: int = Field(50_000, ge=0, description="users held in process (0: off)")
    cache_bytes: int = Field(
        256 << 20, ge=0, description="bytes the process tier may hold (keys, vectors, overhead)"
    )
    cache_ttl_s: float = Field(600.0, gt=0)
    redis_url: str | None = Field(
        None,
        description="redis://host:port/db, or redis+cluster://host:port for a Redis Cluster (any "
        "one node: the client learns the others); unset: no Redis tier",
    )
    redis_timeout_ms: int = Field(50, ge=1, description="hard limit of one Redis call")
    redis_breaker_failures: int = Field(3, ge=1, description="errors in a row that open it")
    redis_breaker_reset_s: float = Field(1.0, gt=0, description="how long it stays open")

    # user feature store: requests without user_features read the user's stored features
    user_store: str | None = Field(
        None,
        description="redis://host:port/db of the user feature store (`ranker users load`), "
        "redis+cluster://host:port for a Redis Cluster, or the path of an embedded store's "
        "file (`ranker users build`: loaded in the process, no Redis); unset: user_features "
        "are required",
    )
    user_store_timeout_ms: int = Field(50, ge=1, description="hard limit of one store read")
    user_max_age_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="the staleness bound: a stored user's features are re-checked (one read of "
        "their 32-byte digest) when last checked longer ago than this; 0: on every request",
    )

    # fusion: score = pctr^a * pcvr^b * price^c (product) or a*pctr + b*pcvr + c*price (sum)
    fusion_policy: Literal["product", "sum"] = "product"
    fusion_a: float = 1.0
    fusion_b: float = 1.0
    fusion_c: float = 0.0
    # per-request exponents stay within [fusion_min, fusion_max], a part of [-8, 8] (the range
    # over which every score stays finite in float64: service/request.py)
    fusion_min: float = Field(-4.0, ge=-8.0, le=8.0)
    fusion_max: float = Field(4.0, ge=-8.0, le=8.0)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("RANKER_ADMIN_TOKEN must be at least 16 characters")
        if self.max_queued_rows < self.max_candidates:
            raise ValueError(
                "RANKER_MAX_QUEUED_ROWS must be at least RANKER_MAX_CANDIDATES, or a valid "
                "request could never be admitted"
            )
        if self.cuda_graph and (self.providers == "cpu" or self.io_binding == "off"):
            raise ValueError(
                "RANKER_CUDA_GRAPH needs CUDA and I/O binding: not with RANKER_PROVIDERS=cpu "
                "or RANKER_IO_BINDING=off"
            )
        if self.fusion_min > self.fusion_max:
            raise ValueError("RANKER_FUSION_MIN must not exceed RANKER_FUSION_MAX")
        for name in ("fusion_a", "fusion_b", "fusion_c"):
            v = getattr(self, name)
            if not self.fusion_min <= v <= self.fusion_max:
                raise ValueError(
                    f"RANKER_{name.upper()}={v} is outside [RANKER_FUSION_MIN, RANKER_FUSION_MAX]"
                )
        return self
