"""The scheduler's Prometheus metrics, with BinderHub's meanings under Bindery's names:
`bindery_launch_duration_seconds` is BinderHub's `binderhub_launch_time_seconds` (from an image
being ready to launch to the session answering, or the launch failing, by status, BinderHub's
buckets); `bindery_launches_in_progress` is its `binderhub_inprogress_launches`.

In: `timed_launch` around the coroutine that runs one launch, `launch_failed()` or
`launch_abandoned()` from within it when it ends without a session, `watch(admission)` once.
Out: the metrics in the default registry.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec

from prometheus_client import Counter, Gauge, Histogram

from bindery.metrics import LAUNCH_BUCKETS
from bindery.scheduler.admission import Admission

P = ParamSpec("P")

LAUNCH_SECONDS = Histogram(
    "bindery_launch_duration_seconds",
    "From an image ready to launch to its session answering or the launch failing, by status",
    ["status"],
    buckets=LAUNCH_BUCKETS,
)
LAUNCHES_IN_PROGRESS = Gauge(
    "bindery_launches_in_progress", "Launches this replica is placing, starting or waiting for"
)
WARM_POOL_HITS = Counter(
    "bindery_warm_pool_hits", "Launches served by claiming an already running warm session"
)
DISK_CHECK_SECONDS = Histogram(
    "bindery_disk_check_duration_seconds",
    "One measure of every session's disk use on every node (podman walks their files)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DISK_STOPS = Counter(
    "bindery_disk_limit_stops", "Sessions stopped for writing more than the disk limit"
)
SESSIONS_ENDED = Counter(
    "bindery_sessions_ended_by_themselves",
    "Sessions whose server exited without Bindery stopping it, by the reason given",
    ["reason"],
)
NODE_UP = Gauge(
    "bindery_node_up",
    "Whether the node answered the runtime's last survey (1) or not (0)",
    ["node"],
)
SESSIONS = Gauge("bindery_sessions", "Sessions holding a seat, launched (not warm)")
WARM_SESSIONS = Gauge("bindery_warm_sessions", "Warm sessions waiting to be claimed")
QUOTA_TOTAL = Gauge("bindery_quota_total", "Sessions allowed at once in all")
QUOTA_WAITING = Gauge("bindery_quota_waiting", "Launches queued for a free seat")

_status: ContextVar[str] = ContextVar("launch_status", default="success")


def timed_launch(
    func: Callable[P, Coroutine[Any, Any, None]],
) -> Callable[P, Coroutine[Any, Any, None]]:
    """Decorator for the coroutine that runs one launch: times it and counts it in progress."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        started = time.monotonic()
        token = _status.set("success")
        try:
            with LAUNCHES_IN_PROGRESS.track_inprogress():
                await func(*args, **kwargs)
        except BaseException:
            _status.set("failure")
            raise
        finally:
            LAUNCH_SECONDS.labels(_status.get()).observe(time.monotonic() - started)
            _status.reset(token)

    return wrapper


def launch_failed() -> None:
    """The launch running in this task ended without a session."""
    _status.set("failure")


def launch_abandoned() -> None:
    """The launch running in this task was abandoned by its clients before it was ready."""
    _status.set("abandoned")


def watch(admission: Admission) -> None:
    """Quota use, read from the admission's view whenever metrics are scraped."""
    cluster = admission.cluster
    SESSIONS.set_function(cluster.launched_sessions)
    WARM_SESSIONS.set_function(lambda: len(cluster.pool_seats()))
    QUOTA_TOTAL.set(admission.total_quota)
    QUOTA_WAITING.set_function(lambda: len(admission.waiters))
