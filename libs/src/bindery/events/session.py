"""Events of a session's life: placed, ready, active, idle, stopped.

Producers: scheduler (pod-scheduled, pod-ready, pod-stopped), gateway (session-activity),
culler (idle-detected). Tokens are never part of an event: the gateway derives them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from bindery.events.base import Event, register
from bindery.events.launch import LaunchContext


class QueueLimit(StrEnum):
    """What a queued launch waits for."""

    REPOSITORY = "repository"
    """Its repository's quota of concurrent sessions is full."""
    TOTAL = "total"
    """Bindery's total quota or its nodes' capacity is full."""
    STARTING = "starting"
    """It has a seat, but its node already starts as many sessions as it may at once
    (`BINDERY_START_CONCURRENCY`): it waits its turn in that node's line."""


@register
class LaunchQueued(Event):
    """The launch waits; `position` 1 is next in the line `limit` names. Re-sent whenever the
    position changes."""

    type = "launch-queued"

    repo_key: str
    position: int = Field(ge=1)
    limit: QueueLimit


@register
class ImagePulling(Event):
    """No node with room holds the image: `node` pulls it from the registry first."""

    type = "image-pulling"

    node: str
    image: str


@register
class PodScheduled(Event):
    """A node was chosen and the session container is starting (BinderHub phase `launching`)."""

    type = "pod-scheduled"

    session: str
    node: str
    image: str


@register
class PodReady(Event):
    """Jupyter answers inside the session; the gateway can route `/user/<session>/` to `target`.
    `context` is the launch's (a warm session claimed for it included): what was launched."""

    type = "pod-ready"
    version = 2

    context: LaunchContext
    session: str
    node: str
    image: str
    target: str = Field(description="base URL the gateway proxies to, e.g. http://127.0.0.1:41234")


@register
class SessionActivity(Event):
    """The gateway saw traffic for `session` up to `last_activity` (batched, not per request)."""

    type = "session-activity"

    session: str
    last_activity: datetime


class StopReason(StrEnum):
    IDLE = "idle"
    MAX_AGE = "max_age"
    ORPHANED = "orphaned"
    FAILED = "failed"
    DISK = "disk"
    """The session wrote more than its disk limit (`BINDERY_DISK_LIMIT`)."""
    SHUT_DOWN = "shut_down"
    """Its Jupyter server exited cleanly by itself: File > Shut Down, `POST /api/shutdown`."""
    CRASHED = "crashed"
    """Its server exited with an error, or was killed or removed from outside Bindery."""
    OOM = "oom"
    """The kernel's OOM killer ended its server (as the runtime reports: Kubernetes does)."""
    ABANDONED = "abandoned"
    """Every client left its launch before it was ready (launch-abandoned); it had started."""
    NODE_LOST = "node_lost"
    """Its node did not answer for longer than `BINDERY_NODE_LOST_SECONDS`."""


@register
class IdleDetected(Event):
    type = "idle-detected"

    session: str
    reason: StopReason
    idle_seconds: float | None = Field(
        default=None, ge=0, description="for reason `idle`: how long nobody had used it"
    )


@register
class PodStopped(Event):
    type = "pod-stopped"

    session: str
    reason: StopReason
    idle_seconds: float | None = Field(
        default=None,
        ge=0,
        description="for reason `idle`: how long nobody had used it (its address says so)",
    )
