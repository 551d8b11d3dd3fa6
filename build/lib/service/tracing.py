"""OpenTelemetry traces, optional (RANKER_TRACING=otlp): while tracing is off this module imports
nothing of OpenTelemetry, and the service runs without the `tracing` extra installed. (FastAPI
0.16x itself requires and imports opentelemetry-api, for a telemetry of its own that stays
dormant here: it wakes only for a global provider, which the service never sets.)

On: every request gets a server span (opentelemetry-instrumentation-fastapi), and the steps of a
/rank request are its children: `span("decode")` and the like around code on the event loop,
`interval(...)` for a step timed elsewhere (the batcher's wait and run). Spans go over OTLP/HTTP
in batches to `OTEL_EXPORTER_OTLP_ENDPOINT`, which the exporter reads itself, like the other
`OTEL_*` variables (service name, sampling, headers).

Off: `span` returns one shared no-op context manager and `interval` and `annotate` return at
once, so the hot path pays a function call and a global read per step.

The tracer is this module's, set by the app's lifespan (`start`) and cleared when it ends, from
the provider the app was built with: tests give an app a provider of their own (an in-memory
exporter), and OpenTelemetry's global provider, which can be set only once, is never set.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import TracerProvider

_NOOP = contextlib.nullcontext()
_tracer: Any = None  # an opentelemetry Tracer while an app with tracing on is serving
_current_span: Any = None  # opentelemetry.trace.get_current_span, imported with the tracer


def instrument(
    app: FastAPI, mode: str, provider: TracerProvider | None = None
) -> TracerProvider | None:
    """For mode "otlp": the app's requests traced through `provider` (default: one exporting
    over OTLP/HTTP in batches). Returns the provider for `start`, or None when off."""
    if mode == "off":
        return None
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError as e:
        raise RuntimeError(
            f"RANKER_TRACING={mode} needs the tracing extra: pip install 'ranker[tracing]' ({e})"
        ) from None
    if provider is None:
        provider = _otlp_provider()
    # send/receive: one span per body chunk or header message, noise next to a request's steps
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    return provider


def _otlp_provider() -> TracerProvider:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "ranker"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def start(provider: TracerProvider | None) -> None:
    """Steps are traced through `provider` from now on (None: not traced)."""
    global _tracer, _current_span
    if provider is None:
        _tracer = _current_span = None
        return
    from opentelemetry.trace import get_current_span

    _tracer, _current_span = provider.get_tracer("service"), get_current_span


def enabled() -> bool:
    return _tracer is not None


def span(name: str):
    """A context manager: a child span of the current one, or nothing when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name)


def interval(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A child span of the current one that began and ended at the given times (time.time_ns),
    for a step that ran elsewhere: created here, on the request's side, so no span object
    crosses a thread."""
    if _tracer is None:
        return
    _tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)


def annotate(**attributes: Any) -> None:
    """Attributes of the current span (no-op when tracing is off)."""
    if _tracer is not None:
        _current_span().set_attributes(attributes)
