"""OpenTelemetry for every service: one trace per launch, carried across the broker.

In: the service name and `CommonSettings.trace_exporter`; AMQP or HTTP headers of incoming work.
Out: spans (exported to stdout, a JSON-lines file, an OTLP collector, or nowhere) and a W3C
`traceparent` header on every message a service publishes, so the spans of the gateway,
resolver, builder, scheduler and archiver for one launch share one trace id.

The gateway's publish of `launch-requested` opens the trace (or continues the caller's, when
the HTTP request carried a `traceparent`); the bus continues it on every consume and publish;
stages open child spans with `span()` or `@traced()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bindery.decorators import Async, P, R, around
from bindery.settings import CommonSettings

# W3C trace context only (traceparent/tracestate): the one format every tracer understands.
_PROPAGATOR = TraceContextTextMapPropagator()
# One tracer for the process, not one per span (the SDK builds a new one on each ask): made
# before `configure`, it is a proxy that turns into the installed provider's on first use.
_TRACER = trace.get_tracer("bindery")


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per finished span, written with a single `write()` on an O_APPEND file
    descriptor, so several service processes can share one file without interleaving lines."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            os.write(self._fd, (span.to_json(indent=None) + "\n").encode())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._fd > 2:
            os.close(self._fd)


def _exporter(settings: CommonSettings) -> tuple[SpanExporter, bool] | None:
    """The configured exporter and whether it is remote (then spans are batched)."""
    match settings.trace_exporter:
        case "console":
            return JsonLinesSpanExporter(1), False
        case "file":
            if not settings.trace_file:
                raise SystemExit("BINDERY_TRACE_EXPORTER=file needs BINDERY_TRACE_FILE")
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            return JsonLinesSpanExporter(os.open(settings.trace_file, flags, 0o644)), False
        case "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=settings.otlp_endpoint), True
        case _:
            return None


def configure(service: str, settings: CommonSettings) -> TracerProvider:
    """Install this process's tracer provider. Even with no exporter a real provider is set:
    trace ids must still be made and propagated so log lines of one launch correlate."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"bindery-{service}"}))
    chosen = _exporter(settings)
    if chosen is not None:
        exporter, remote = chosen
        # Local exporters write at once (a span is on disk when its stage ends); a collector
        # over the network gets batches, off the event loop.
        processor = BatchSpanProcessor(exporter) if remote else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def shutdown() -> None:
    """Flush spans still batched; called when a service stops."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def inject(headers: dict[str, Any]) -> dict[str, Any]:
    """Add the current trace context (`traceparent`, `tracestate`) to outgoing headers."""
    _PROPAGATOR.inject(headers)
    return headers


def extract(headers: Mapping[str, Any] | None) -> Context:
    """The trace context an incoming message or request carried (empty when none)."""
    carrier = {k.lower(): v for k, v in (headers or {}).items() if isinstance(v, str)}
    return _PROPAGATOR.extract(carrier)


def trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@contextmanager
def span(
    name: str,
    *,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A child of the current span (or of `context`); an exception marks it failed."""
    with _TRACER.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes
    ) as current:
        yield current


@contextmanager
def continued(context: Context) -> Iterator[None]:
    """Make `context` current without a span of its own: for high-volume messages (build
    logs) whose log lines should still carry their launch's trace id."""
    token = attach(context)
    try:
        yield
    finally:
        detach(token)


def fail(description: str) -> None:
    """Mark the current span failed where the exception is handled rather than raised."""
    trace.get_current_span().set_status(Status(StatusCode.ERROR, description))


class PhaseSpans:
    """One span per phase of a stream of progress lines (a build's fetching, building,
    pushing): a line in a new phase ends the current span and opens the next, each a child of
    the span current when the phase began."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._phase: str | None = None
        self._span: Span | None = None

    def enter(self, phase: str) -> None:
        if phase == self._phase:
            return
        self.end()
        self._phase = phase
        self._span = _TRACER.start_span(f"{self._prefix}.{phase}")

    def end(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None


def http_middleware(prefixes: tuple[str, ...]) -> Middleware:
    """A server span for each request under `prefixes` (the gateway's /build/: it opens the
    launch's trace, and lasts as long as the person watches it). A request carrying
    `traceparent` (an API client, another traced system) joins the caller's trace instead."""

    @web.middleware
    async def trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefixes):
            return await handler(request)
        with span(
            f"{request.method} {prefixes[0]}",
            context=extract(request.headers),
            kind=SpanKind.SERVER,
        ):
            return await handler(request)

    return trace_requests


def traced(name: str) -> Callable[[Async[P, R]], Async[P, R]]:
    """Decorator: run a coroutine function inside a span named `name` (a launch stage)."""
    return around(lambda: span(name))
