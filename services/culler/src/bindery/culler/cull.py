"""The culler's domain: which sessions are idle or too old.

In: pod-ready (a session, and where its Jupyter answers), pod-stopped and session-activity
events; at start, the runtime's session list and the event log's recent session-activity; the
sessions' own account of their activity (`AskSession`, their Jupyter's kernels and terminals);
and a timer. Out: idle-detected, once per session until it stops (re-sent if it is still there
after another idle period, in case the first request was lost).

A session's last activity is the latest of: what the gateway saw a person do (requests and
websocket messages a person causes, never background polling or pings: bindery.gateway.activity),
the last activity of its kernels and terminals as its Jupyter reports it, and the time of a check
that found one of its kernels busy (code running is activity, however long it runs). A session
is asked only once the culler's own view says it has been idle for the whole idle period, so a
session in use costs one dictionary entry and nothing per check; after a restart that is every
session without activity in the event log's last idle period. A session that does not answer
keeps its last known activity: a broken Jupyter is culled on the gateway's evidence alone.

A session's answers come from code the repository controls (it may start a server of its own
that claims a busy kernel forever), so the maximum age stops every session whatever it claims.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from prometheus_client import Counter

from bindery.events import Event, IdleDetected, PodReady, PodStopped, SessionActivity, StopReason
from bindery.runtimes import Session

log = structlog.get_logger("bindery.culler")

STOPS_REQUESTED = Counter(
    "bindery_culler_stops_requested", "idle-detected events published, by reason", ["reason"]
)
SESSIONS_ASKED = Counter(
    "bindery_culler_sessions_asked",
    "Sessions asked about their own activity, by outcome (answered, no_answer)",
    ["outcome"],
)

Publish = Callable[[Event], Awaitable[None]]


class NoAnswer(Exception):
    """The session's Jupyter did not answer, or not in a form the culler understands."""


AskSession = Callable[[str, str], Awaitable[datetime | None]]
"""(session, target) -> the session's last activity by its own account (None: nothing there has
ever been active); raises NoAnswer."""


@dataclass
class Tracked:
    launch_id: str
    started: datetime
    last_activity: datetime
    target: str
    """Base URL of the session's Jupyter server ("": unknown, the session is never asked)."""
    requested_at: datetime | None = None
    """When its stop was last requested."""

    def saw(self, activity: datetime) -> None:
        """Evidence arrives out of order (the event log, the queue, the session itself)."""
        if activity > self.last_activity:
            self.last_activity = activity


@dataclass
class Culler:
    idle_timeout: float
    max_age: float
    publish: Publish
    ask: AskSession
    ask_concurrency: int = 50
    sessions: dict[str, Tracked] = field(default_factory=dict)

    def adopt(self, existing: Iterable[Session]) -> None:
        """Track the sessions that ran before this process started, their activity counted from
        their start until the event log (`observe`) and the sessions themselves (at each check)
        say better."""
        for session in existing:
            self.sessions.setdefault(
                session.name,
                Tracked(session.launch_id, session.started, session.started, session.target),
            )

    def presume_active(self, since: datetime) -> None:
        """Without the event log the culler cannot tell a session idle for an hour from one in
        use a minute ago: each gets a whole idle period from `since` (the restart) rather than
        being stopped by mistake."""
        for tracked in self.sessions.values():
            tracked.saw(since)

    def observe(self, event: Event) -> None:
        if isinstance(event, PodReady):
            tracked = self.sessions.get(event.session)
            if tracked is None:
                self.sessions[event.session] = Tracked(
                    event.launch_id, event.time, event.time, event.target
                )
            else:  # redelivered, or already adopted from the runtime
                tracked.target = event.target
                tracked.saw(event.time)
        elif isinstance(event, PodStopped):
            self.sessions.pop(event.session, None)
        elif isinstance(event, SessionActivity):
            tracked = self.sessions.get(event.session)
            if tracked is not None:
                tracked.saw(event.last_activity)

    def due(self, now: datetime) -> list[tuple[str, Tracked, StopReason]]:
        """Sessions to stop by what the culler knows now, with why."""
        found = []
        for name, tracked in self.sessions.items():
            if (
                tracked.requested_at
                and (now - tracked.requested_at).total_seconds() < self.idle_timeout
            ):
                continue
            if (now - tracked.started).total_seconds() > self.max_age:
                found.append((name, tracked, StopReason.MAX_AGE))
            elif self._idle(tracked, now):
                found.append((name, tracked, StopReason.IDLE))
        return found

    def _idle(self, tracked: Tracked, now: datetime) -> bool:
        return (now - tracked.last_activity).total_seconds() > self.idle_timeout

    async def check(self, now: datetime | None = None) -> None:
        """Ask the sessions that look idle whether they are, then request a stop for each one
        still idle and each one past its maximum age. A failed publish ends the check (the
        broker is likely down): the sessions not yet requested are requested at the next."""
        now = now or datetime.now(UTC)
        due = self.due(now)
        await self._ask_sessions(
            (name, tracked) for name, tracked, reason in due if reason is StopReason.IDLE
        )
        for name, tracked, reason in due:
            if reason is StopReason.IDLE and not self._idle(tracked, now):
                continue  # its kernels or terminals were active after all
            log.info(
                "cull.requested",
                session=name,
                reason=reason.value,
                launch_id=tracked.launch_id,
                last_activity=tracked.last_activity.isoformat(),
            )
            idle_for = (now - tracked.last_activity).total_seconds()
            await self.publish(
                IdleDetected(
                    launch_id=tracked.launch_id,
                    session=name,
                    reason=reason,
                    # The session's address tells its person how long (gateway: ended.py).
                    idle_seconds=idle_for if reason is StopReason.IDLE else None,
                )
            )
            STOPS_REQUESTED.labels(reason.value).inc()
            tracked.requested_at = now

    async def _ask_sessions(self, candidates: Iterable[tuple[str, Tracked]]) -> None:
        """Ask each session (`ask_concurrency` at a time) for its own account of its activity."""
        limit = asyncio.Semaphore(self.ask_concurrency)

        async def ask(name: str, tracked: Tracked) -> None:
            async with limit:
                try:
                    answer = await self.ask(name, tracked.target)
                except NoAnswer as exc:
                    SESSIONS_ASKED.labels("no_answer").inc()
                    log.warning(
                        "cull.no_answer",
                        session=name,
                        error=str(exc),
                        last_activity=tracked.last_activity.isoformat(),
                    )
                    return
            SESSIONS_ASKED.labels("answered").inc()
            if answer is not None:
                tracked.saw(answer)

        await asyncio.gather(*(ask(name, t) for name, t in candidates if t.target))
