"""Prometheus metrics of one app instance (its own registry, so several apps can coexist)."""

from __future__ import annotations

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    generate_latest,
    values,
)

BINS = 10  # calibration bins: tenths of [0, 1]
PATHS = frozenset(
    ("/rank", "/feedback", "/admin/reload", "/healthz", "/readyz", "/metrics", "/v1/model", "/docs")
)


def _add(summary, total, n) -> None:
    """`n` observations summing to `total`, added at once to a Summary's child (its `_sum` and
    `_count` values: what n calls of `observe` would add, without n calls)."""
    summary._sum.inc(float(total))
    summary._count.inc(int(n))


class Metrics:
    """With RANKER_WORKERS > 1 (service/workers.py) every worker writes its samples where all can
    read them (prometheus_client's multiprocess mode) and `exposition` sums them; gauges say how
    (in flight and queued: summed over the live workers; breaker and model: the highest)."""

    def __init__(self) -> None:
        self.multiprocess = values.ValueClass is not values.MutexValue
        self._queue_rows = None  # the admission's row count, read per request (multiprocess)
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "ranker_request_seconds",
            "latency of every response, by path and status",
            ["path", "status"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5),
        )
        self.candidates = Histogram(
            "ranker_candidates_per_request",
            "candidates per /rank request",
            registry=r,
            buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
        )
        self.batch_rows = Histogram(
            "ranker_batch_rows",
            "candidate rows per item-scorer run",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000),
        )
        self.batch_jobs = Histogram(
            "ranker_batch_jobs",
            "request parts per item-scorer run",
            registry=r,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
        )
        self.runs = Counter("ranker_scorer_runs", "item-scorer runs", registry=r)
        stage_buckets = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)
        self.batch_seconds = Histogram(
            "ranker_batch_run_seconds",
            "time of one item-scorer run (its batch's rows together), on the scorer thread",
            registry=r,
            buckets=stage_buckets,
        )
        self.batch_wait = Histogram(
            "ranker_batch_wait_seconds",
            "time a request's rows waited for their run (submitted until the run began)",
            registry=r,
            buckets=stage_buckets,
        )
        self.loop_lag = Histogram(
            "ranker_event_loop_lag_seconds",
            "how late a 50 ms timer of the event loop fires: the time every ready callback "
            "waits behind the work the loop is doing",
            registry=r,
            buckets=stage_buckets,
        )
        self.unknown_items = Counter(
            "ranker_unknown_items",
            "candidates with no features given and an id the item table lacks (scored by id)",
            registry=r,
        )
        self.unknown_users = Counter(
            "ranker_unknown_users",
            "requests without user_features for a user the store lacks (scored by id)",
            registry=r,
        )
        self.user_store = Counter(
            "ranker_user_store_calls",
            "user store reads: op check (the digest) or fetch (the features); outcome ok, "
            "recent (checked within RANKER_USER_MAX_AGE_S: not read), error, skipped, "
            "bad_record; op breaker: open, closed",
            ["op", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "ranker_requests_in_flight",
            "requests received and not yet answered, by path",
            ["path"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_rows = Gauge(
            "ranker_queue_rows",
            "candidate rows waiting to be scored",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache = Counter(
            "ranker_user_cache", "user cache lookups", ["tier", "outcome"], registry=r
        )
        self.responses = Counter(
            "ranker_responses",
            "every response, by path, status and type (ok, or the error type)",
            ["path", "status", "type"],
            registry=r,
        )
        self.shed = Counter(
            "ranker_shed_requests",
            "requests refused by admission: queue_full, deadline or draining",
            ["reason"],
            registry=r,
        )
        self.redis = Counter(
            "ranker_redis_calls", "Redis tier calls by outcome", ["op", "outcome"], registry=r
        )
        self.redis_open = Gauge(
            "ranker_redis_breaker_open",
            "1 while the Redis tier is skipped",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.log_dropped = Counter(
            "ranker_log_dropped",
            "answers the impression log lost: queue_full (never waited for) or write_error",
            ["reason"],
            registry=r,
        )
        self.log_written = Counter(
            "ranker_log_written_rows", "item rows the impression log wrote", registry=r
        )
        self.arm_answers = Counter(
            "ranker_arm_answers",
            "/rank answers by the user's arm (RANKER_ARMS)",
            ["arm"],
            registry=r,
        )
        self.arm_users = Gauge(
            "ranker_arm_users",
            "distinct users seen per arm since its config was loaded (the sample-ratio check's)",
            ["arm"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.arms_mismatch = Gauge(
            "ranker_arms_sample_ratio_mismatch",
            "1 while the arms' users depart from their shares (chi-square p < 0.001)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.arms_reloads = Counter(
            "ranker_arms_reloads", "arms config re-reads by outcome", ["outcome"], registry=r
        )
        self.warmup = Counter(
            "ranker_warmup_requests",
            "recent /rank bodies replayed into a version before it served (replayed), or that "
            "version refused (skipped)",
            ["outcome"],
            registry=r,
        )
        self.shadow = Counter(
            "ranker_shadow_answers",
            "answers scored again by the arms' shadow model, by outcome (ok, failed, timeout)",
            ["outcome"],
            registry=r,
        )
        # Predictions as summaries (a `_sum` and a `_count`, as Prometheus reads a sum of
        # observations), added to in bulk: an answer's few hundred at once (on_outcome)
        heads = ["head", "model_version", "arm"]
        self.prediction = Summary(
            "ranker_prediction", "predictions, per head (ctr, cvr, ctcvr)", heads, registry=r
        )
        self.labels_total = Counter(
            "ranker_labels", "outcomes reported (POST /feedback), per head", heads, registry=r
        )
        self.bin_prediction = Summary(
            "ranker_calibration_bin_prediction",
            "predictions by tenth of [0, 1]",
            [*heads, "bin"],
            registry=r,
        )
        self.bin_labels = Counter(
            "ranker_calibration_bin_labels",
            "outcomes by the tenth of [0, 1] their prediction was in",
            [*heads, "bin"],
            registry=r,
        )
        self._children: dict = {}  # (metric, labels) -> child: an answer counts ~40 samples
        self.reloads = Counter(
            "ranker_reloads", "model reloads by outcome", ["outcome"], registry=r
        )
        self.model = Gauge(
            "ranker_model_info",
            "the served model version",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        if not self.multiprocess:  # (per process: the sum over workers would mean nothing)
            ProcessCollector(registry=r)  # process_resident_memory_bytes and friends

    def watch_queue(self, rows) -> None:
        """`rows()`: the candidate rows admission holds, exported as ranker_queue_rows."""
        if self.multiprocess:
            self._queue_rows = rows
        else:
            self.queue_rows.set_function(rows)

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's, or with several workers all of theirs."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def on_request(self, method: str, path: str) -> None:
        self.in_flight.labels(path if path in PATHS else "other").inc()
        if self._queue_rows is not None:
            self.queue_rows.set(self._queue_rows())

    def on_response(
        self, method: str, path: str, status: int, error_type: str | None, seconds: float
    ) -> None:
        path = path if path in PATHS else "other"  # a label per known path, not per URL
        self.in_flight.labels(path).dec()
        code = str(status)
        self.responses.labels(path, code, error_type or ("ok" if status < 400 else "http")).inc()
        self.latency.labels(path, code).observe(seconds)
        if self._queue_rows is not None:
            self.queue_rows.set(self._queue_rows())

    def on_run(self, rows: int, jobs: int, seconds: float, waits: list[float]) -> None:
        self.runs.inc()
        self.batch_rows.observe(rows)
        self.batch_jobs.observe(jobs)
        self.batch_seconds.observe(seconds)
        for w in waits:
            self.batch_wait.observe(w)

    def on_cache(self, tier: str, outcome: str) -> None:
        self.cache.labels(tier, outcome).inc()

    def on_redis(self, op: str, outcome: str) -> None:
        if op == "breaker":
            self.redis_open.set(1 if outcome == "open" else 0)
        self.redis.labels(op, outcome).inc()

    def on_user_store(self, op: str, outcome: str) -> None:
        self.user_store.labels(op, outcome).inc()

    def _child(self, metric, *labels):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_outcome(self, kind: str, head: str, version: str, arm: str, p: np.ndarray) -> None:
        """Predictions or labels of a head (service/feedback.py), whole and by bin (22 µs
        an answer of 500 items, both heads: measured in process)."""
        b = np.minimum((p.astype(np.float64) * BINS).astype(np.int64), BINS - 1)
        n = np.bincount(b, minlength=BINS)
        if kind == "predictions":
            _add(self._child(self.prediction, head, version, arm), float(p.sum()), len(p))
            sums = np.bincount(b, weights=p, minlength=BINS)
            for k in np.flatnonzero(n).tolist():
                _add(self._child(self.bin_prediction, head, version, arm, str(k)), sums[k], n[k])
        else:
            self._child(self.labels_total, head, version, arm).inc(len(p))
            for k in np.flatnonzero(n).tolist():
                self._child(self.bin_labels, head, version, arm, str(k)).inc(int(n[k]))

    def on_arm(self, name: str, arms) -> None:
        """An answer in arm `name` of `arms` (service/arms.py)."""
        self.arm_answers.labels(name).inc()
        self.arm_users.labels(name).set(arms.users[arms.index[name]])
        self.arms_mismatch.set(1 if arms.mismatch else 0)

    def on_arms(self, arms, previous=None) -> None:
        """A config loaded, at start or in place of `previous` (whose per-arm users no longer
        count)."""
        if previous is not None:
            self.arms_reloads.labels("ok").inc()
            for a in previous.arms:
                self.arm_users.remove(a.name)
        for a in arms.arms:
            self.arm_users.labels(a.name).set(0)
        self.arms_mismatch.set(0)

    def on_arms_refused(self, reason: str) -> None:
        self.arms_reloads.labels("refused").inc()

    def on_model(self, version: str, previous: str | None = None) -> None:
        if previous is not None:
            self.model.labels(previous).set(0)  # what the other workers read, in multiprocess
            self.model.remove(previous)
        self.model.labels(version).set(1)
