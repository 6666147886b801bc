"""Prometheus metrics every service shares, and the `/metrics` route that serves them.

In: the bus's counts of messages handled and published, failed steps of background loops,
queue depths asked of the broker at scrape time, and whatever service-specific metrics a
service registers in the default registry.
Out: Prometheus' text format on `GET /metrics` beside `/health`.

Durations use BinderHub's bucket boundaries (launches 2 s..10 min, builds 1 min..2 h) so
dashboards built for mybinder.org read Bindery's histograms the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bindery.decorators import Async, P, R, around

#: BinderHub's LAUNCH_BUCKETS: starting a server from an image is seconds, rarely minutes.
LAUNCH_BUCKETS = (2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
#: BinderHub's BUILD_BUCKETS: building an image takes minutes, large ones hours.
BUILD_BUCKETS = (60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
#: Handlers range from a dictionary update (gateway) to a whole build (builder).
HANDLER_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600, float("inf"))

HANDLER_SECONDS = Histogram(
    "bindery_handler_duration_seconds",
    "Time a handler took for one message, by event type and outcome (ok, retry, error, invalid)",
    ["event_type", "outcome"],
    buckets=HANDLER_BUCKETS,
)
EVENTS_CONSUMED = Counter(
    "bindery_events_consumed",
    "Messages handled, by event type and outcome (ok, retry, error, invalid)",
    ["event_type", "outcome"],
)
EVENTS_PUBLISHED = Counter(
    "bindery_events_published",
    "Messages published, by event type and outcome (ok: confirmed by the broker, error)",
    ["event_type", "outcome"],
)
PUBLISH_RETRIES = Counter(
    "bindery_publish_retries",
    "Publishes tried again after their connection or channel was lost, by routing key",
    ["routing_key"],
)
LOOP_ERRORS = Counter(
    "bindery_loop_errors",
    "Failed steps of a service's background loops (each retried at the next interval)",
    ["service", "loop"],
)
QUEUE_DEPTH = Gauge(
    "bindery_queue_messages",
    "Messages ready in a queue this service consumes, asked of the broker at scrape time",
    ["queue"],
)

Refresh = Callable[[], Awaitable[None]]


def tracks(gauge: Gauge) -> Callable[[Async[P, R]], Async[P, R]]:
    """Decorator: `gauge` counts the calls of a coroutine function in progress."""
    return around(gauge.track_inprogress)


def render() -> bytes:
    return generate_latest(REGISTRY)


def route(refresh: Refresh | None = None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for `/metrics`; `refresh` updates gauges asked of others first."""

    async def metrics(_request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        response = web.Response(body=render())
        # Set whole: aiohttp's content_type setter would drop the format version.
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return metrics
