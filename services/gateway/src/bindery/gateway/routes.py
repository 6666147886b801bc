"""The route table: which session answers `/user/<session>/...`, and where.

In: pod-ready and pod-stopped events (handlers.py), and on start the runtime's running sessions
(`rebuild_routes_once`: sessions outlive a gateway restart, so must their routes). Out: a
`Route` per session -- Jupyter's base URL parsed once into the address the proxy connects to
and the path before `/user/<session>/` -- that the proxy looks up per request and on which it
notes a person's activity (activity.py); and, for a session that stopped recently, why it ended
and how to launch another like it (ended.py), so its address says so instead of a bare 404.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from yarl import URL

from bindery.events import StopReason
from bindery.gateway.ended import Ended, relaunch_link
from bindery.gateway.upstream import Target
from bindery.runtimes import Session

log = structlog.get_logger("bindery.gateway.routes")

REBUILD_WAIT_SECONDS = 10.0
"""How long a request for an unknown session waits for the start-up rebuild of routes: a
listing of every node takes well under a second, even with hundreds of sessions."""
# Stopped sessions whose reason a replica keeps: a day of mybinder.org's stops, a few MiB.
STOPPED_REMEMBERED = 50_000


@dataclass
class Route:
    session: str
    target: str
    launch_id: str
    relaunch: str = ""
    """Where a person gets another session like this one once it ended (ended.relaunch_link)."""
    last_activity: float = 0.0
    """Wall-clock time of the last request or message a person caused (0: none since the route
    was added)."""
    flushed_activity: float = 0.0
    # Where to connect, parsed once from the target: (host, port, tls) and the path before
    # /user/<session>/ (empty for Jupyter at the root of its server).
    address: Target = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        url = URL(self.target)
        tls = url.scheme in ("https", "wss")
        self.address = (url.host or "127.0.0.1", url.port or (443 if tls else 80), tls)
        self.prefix = url.raw_path.rstrip("/")

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def tls(self) -> bool:
        return self.address[2]

    def touch(self) -> None:
        self.last_activity = time.time()


class RouteTable:
    """session -> Route; a dict held by this replica, filled from events and the runtime."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        # Why recent sessions stopped, so their address says so instead of a bare 404.
        self._ended: collections.OrderedDict[str, Ended] = collections.OrderedDict()
        # Set once the routes of sessions that outlived a restart are back (or there is no
        # runtime to ask): until then an unknown session may be one of them, not a 404.
        self.rebuilt = asyncio.Event()

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, session: object) -> bool:
        return session in self._routes

    def get(self, session: str) -> Route | None:
        return self._routes.get(session)

    async def find(self, session: str, wait: float) -> Route | None:
        """The session's route; right after a start, wait up to `wait` s for the rebuild."""
        route = self._routes.get(session)
        if route is None and not self.rebuilt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rebuilt.wait(), wait)
            route = self._routes.get(session)
        return route

    def add(self, session: str, target: str, launch_id: str, relaunch: str = "") -> Route:
        route = self._routes.get(session)
        if route is not None and route.target == target:
            return route
        route = Route(session, target.rstrip("/"), launch_id or session, relaunch)
        self._routes[session] = route
        log.info("route.added", session=session, target=route.target)
        return route

    def remove(
        self, session: str, reason: StopReason | None = None, idle_seconds: float | None = None
    ) -> bool:
        route = self._routes.pop(session, None)
        if route is not None:
            log.info("route.removed", session=session)
        if reason is not None:
            relaunch = route.relaunch if route else ""
            self._ended[session] = Ended(reason, relaunch, idle_seconds)
            while len(self._ended) > STOPPED_REMEMBERED:
                self._ended.popitem(last=False)
        return route is not None

    def ended(self, session: str) -> Ended | None:
        """Why ``session`` ended and how to relaunch it, if this replica saw it stop recently."""
        return self._ended.get(session)

    def due_activity(self) -> list[Route]:
        """Routes with activity not yet published."""
        return [r for r in self._routes.values() if r.last_activity > r.flushed_activity]


class SessionLister(Protocol):
    async def list_sessions(self) -> list[Session]: ...


async def rebuild_routes(runtime: SessionLister, routes: RouteTable) -> int:
    """Add a route for every running session the runtime knows; returns how many it added."""
    added = 0
    for session in await runtime.list_sessions():
        if session.running and session.name and session.target and session.name not in routes:
            routes.add(session.name, session.target, session.launch_id, relaunch_link(session.repo))
            added += 1
    return added


async def rebuild_routes_once(runtime: SessionLister, routes: RouteTable) -> None:
    """A step of the loop that runs from the start until one listing succeeded (a node may be
    down at start), and does nothing after: sessions survive a gateway restart, their routes
    must too. Routes from pod-ready events that arrive meanwhile are kept (rebuilding only adds)."""
    if routes.rebuilt.is_set():
        return
    added = await rebuild_routes(runtime, routes)
    log.info("routes.rebuilt", added=added, total=len(routes))
    routes.rebuilt.set()
