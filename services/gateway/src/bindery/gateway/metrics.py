"""The gateway's own Prometheus metrics, served with the shared ones (`bindery.metrics`).

In: counts and timings noted by the request middleware and the launch handler; gauges read at
scrape time from the route table and the progress buffers. Label values are bounded (route
families, status classes, provider names), never paths, addresses or ids.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from bindery import metrics as shared

if TYPE_CHECKING:  # deps counts abandoned launches here: a runtime import would be a cycle
    from bindery.gateway.deps import Gateway

REQUESTS = Counter(
    "bindery_gateway_requests_total",
    "HTTP requests answered by the gateway",
    ["family", "status"],
)
REQUEST_SECONDS = Histogram(
    "bindery_gateway_request_seconds",
    "Time to answer a request (for streams and websockets: their whole life)",
    ["family"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
)
LAUNCHES_REQUESTED = Counter(
    "bindery_gateway_launches_requested_total", "Launches started from this gateway", ["provider"]
)
LAUNCHES_RESUMED = Counter(
    "bindery_gateway_launches_resumed_total", "Progress streams resumed instead of relaunched"
)
LAUNCHES_ABANDONED = Counter(
    "bindery_gateway_launches_abandoned_total",
    "Launches every client left before they were ready (their session slot was given back)",
)
RATE_LIMITED = Counter(
    "bindery_gateway_rate_limited_total", "Launches refused by the per-client rate limit"
)
TOO_MANY_LAUNCHES = Counter(
    "bindery_gateway_too_many_launches_total",
    "Launches refused because the client held its cap of sessions and launches in progress",
)
BANNED = Counter("bindery_gateway_banned_total", "Requests refused from a banned network")
BUILD_LOG_ANSWERS = Counter(
    "bindery_gateway_build_log_answers_total",
    "Build-log requests by how they were answered: from the cache, by a read of the stream "
    "(read), by joining a read under way (shared), or refused with every read slot taken (busy)",
    ["source"],
)
ROUTES = Gauge("bindery_gateway_routes", "Sessions this gateway can route to")
LAUNCHES_BUFFERED = Gauge(
    "bindery_gateway_launches_buffered", "Launches whose progress this replica keeps for replay"
)


_FAMILIES = frozenset({"build", "v2", "user", "static", "health", "metrics", "versions", "api"})


def family(path: str) -> str:
    """A bounded label for a path: its first segment among the known ones."""
    first = path.split("/", 2)[1] if path.count("/") >= 1 else ""
    if first.startswith("badge"):
        return "badge"
    return first if first in _FAMILIES else ("home" if first == "" else "other")


@functools.cache
def _children(family: str, status_class: str) -> tuple[Counter, Histogram]:
    # `labels()` takes a lock and builds a key on every call; the label sets are few and bounded.
    return (
        REQUESTS.labels(family=family, status=status_class),
        REQUEST_SECONDS.labels(family=family),
    )


def observe_request(family: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    count, duration = _children(family, f"{status // 100}xx")
    count.inc()
    duration.observe(seconds)


def handler(gateway: Gateway) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /metrics`, with the gauges read from `gateway` first."""

    async def refresh() -> None:
        ROUTES.set(len(gateway.routes))
        LAUNCHES_BUFFERED.set(len(gateway.progress))

    return shared.route(refresh)
