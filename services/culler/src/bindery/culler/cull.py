"""The culler's domain: which sessions are idle or too old.

In: pod-ready, pod-stopped and session-activity events, the runtime's session list at start,
and a timer. Out: idle-detected, once per session until it stops (re-sent if it is still there
after another idle period, in case the first request was lost).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from bindery.events import Event, IdleDetected, PodReady, PodStopped, SessionActivity, StopReason
from bindery.runtimes import Session

log = structlog.get_logger("bindery.culler")

Publish = Callable[[Event], Awaitable[None]]


@dataclass
class Tracked:
    launch_id: str
    started: datetime
    last_activity: datetime
    requested_at: datetime | None = None


@dataclass
class Culler:
    idle_timeout: float
    max_age: float
    publish: Publish
    sessions: dict[str, Tracked] = field(default_factory=dict)

    def adopt(self, existing: list[Session]) -> None:
        """Rebuild the view after a restart: unknown activity counts from the session's start."""
        for session in existing:
            self.sessions.setdefault(
                session.name, Tracked(session.launch_id, session.started, session.started)
            )

    def observe(self, event: Event) -> None:
        if isinstance(event, PodReady):
            self.sessions[event.session] = Tracked(event.launch_id, event.time, event.time)
        elif isinstance(event, PodStopped):
            self.sessions.pop(event.session, None)
        elif isinstance(event, SessionActivity):
            tracked = self.sessions.get(event.session)
            if tracked is not None and event.last_activity > tracked.last_activity:
                tracked.last_activity = event.last_activity

    def due(self, now: datetime) -> list[tuple[str, Tracked, StopReason]]:
        found = []
        for name, tracked in self.sessions.items():
            if (
                tracked.requested_at
                and (now - tracked.requested_at).total_seconds() < self.idle_timeout
            ):
                continue
            if (now - tracked.started).total_seconds() > self.max_age:
                found.append((name, tracked, StopReason.MAX_AGE))
            elif (now - tracked.last_activity).total_seconds() > self.idle_timeout:
                found.append((name, tracked, StopReason.IDLE))
        return found

    async def check(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        for name, tracked, reason in self.due(now):
            log.info(
                "cull.requested", session=name, reason=reason.value, launch_id=tracked.launch_id
            )
            await self.publish(
                IdleDetected(launch_id=tracked.launch_id, session=name, reason=reason)
            )
            tracked.requested_at = now
