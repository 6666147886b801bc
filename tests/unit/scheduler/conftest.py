"""The scheduler against a fake runtime (sessions in a dict, exits on a queue, as podman reports
them; nodes in `down` cannot be reached, nodes in `hung` take requests and never answer them,
nodes in `busy` answer their ping but not their lookups in time) and a local HTTP server
answering for every session's Jupyter; events go to a list."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from bindery.events import Event, RepoConfig
from bindery.runtimes import NodeTimedOut, NodeUnreachable, Session, SessionSpec, Survey
from bindery.runtimes.base import DiskUsage, Exit, NodeCheck
from bindery.scheduler.launch import LaunchOrder, Scheduler
from bindery.scheduler.settings import SchedulerSettings
from tests.support.launches import launch_context
from tests.support.schedulerloops import running_loops

GiB = 1024**3
IMAGE = "127.0.0.1:5000/demo:abc"
REPO = "https://example.org/demo"


@dataclass
class FakeRuntime:
    target: str
    images: dict[str, set[str]] = field(default_factory=lambda: {"node-1": set(), "node-2": set()})
    containers: dict[str, Session] = field(default_factory=dict)
    """container key -> session"""
    starts: list[tuple[str, SessionSpec]] = field(default_factory=list)
    pulls: list[tuple[str, str]] = field(default_factory=list)
    """Starts and pulls asked for, by node (on a down node too, where they fail)."""
    exited: asyncio.Queue[Exit] = field(default_factory=asyncio.Queue)
    """What `exits` reports next: every running session stopped, by itself or by Bindery."""
    streams: int = 0
    """How many times `exits` was (re)started."""
    down: set[str] = field(default_factory=set)
    """Nodes that cannot be reached: their sessions are neither listed nor stopped, as with
    podman."""
    hung: set[str] = field(default_factory=set)
    """Nodes whose service is stopped: every request, ping too, gets no answer within its bound."""
    busy: set[str] = field(default_factory=set)
    """Nodes whose storage lock is held: they answer their ping, lookups time out."""
    lookup_seconds: float = 0.3
    """The fake's lookup bound (podman's is NODE_LOOKUP_SECONDS)."""
    ping_seconds: float = 0.1
    """The fake's ping bound (podman's is NODE_PING_SECONDS)."""
    asked: list[tuple[str, str]] = field(default_factory=list)
    """(node, what) for every lookup a node was sent."""

    def node_names(self) -> list[str]:
        return list(self.images)

    def node_checks(self) -> dict[str, NodeCheck]:
        return {node: partial(self._ping, node) for node in self.images}

    async def _ping(self, node: str) -> bool:
        self._check(node)
        if node in self.hung:
            await asyncio.sleep(self.ping_seconds)
            raise NodeUnreachable(node, NodeTimedOut(node, self.ping_seconds))
        return True

    async def node_memory(self, node: str) -> int:
        await self._lookup(node, "memory")
        return 2 * GiB

    def _answering(self) -> dict[str, Session]:
        late = self.down | self.hung | self.busy
        return {k: s for k, s in self.containers.items() if s.node not in late}

    def _check(self, node: str) -> None:
        if node in self.down:
            raise NodeUnreachable(node, ConnectionRefusedError("connection refused"))

    async def _lookup(self, node: str, what: str) -> None:
        self.asked.append((node, what))
        self._check(node)
        if node in self.hung | self.busy:
            await asyncio.sleep(self.lookup_seconds)
            raise NodeTimedOut(node, self.lookup_seconds)

    async def survey(self) -> Survey:
        unreachable = {node: "connection refused" for node in self.down}
        late = self.hung | self.busy
        if late:
            await asyncio.sleep(self.lookup_seconds)
        unanswered = {node: "no answer in time" for node in late}
        return Survey(list(self._answering().values()), unreachable, unanswered)

    async def list_sessions(self) -> list[Session]:
        for node in self.down:
            self._check(node)
        return [s for s in self.containers.values() if not s.warm]

    async def list_warm(self) -> list[Session]:
        for node in self.down:
            self._check(node)
        return [s for s in self.containers.values() if s.warm]

    async def get(self, key: str, skip: Collection[str] = ()) -> Session | None:
        found = self._answering().get(key)
        late = [node for node in self.images if node not in skip and node in self.hung | self.busy]
        if found is None and late:
            await asyncio.gather(*(self._lookup(node, "get") for node in late))
        return found

    async def has_image(self, node: str, image: str) -> bool:
        await self._lookup(node, "image")
        return image in self.images[node]

    async def pull(self, node: str, image: str) -> None:
        self.pulls.append((node, image))
        self._check(node)
        self.images[node].add(image)

    async def start(self, node: str, spec: SessionSpec) -> Session:
        self.starts.append((node, spec))
        self._check(node)
        session = self.session(spec.name, node, spec.image, warm=spec.warm, env=spec.env)
        self.containers[f"warm-{spec.name}" if spec.warm else spec.name] = session
        return session

    async def claim(self, warm: Session, key: str) -> Session:
        session = replace(self.containers.pop(f"warm-{warm.name}"), warm=False)
        self.containers[key] = session
        return session

    async def stop(self, name: str, skip: Collection[str] = ()) -> bool:
        for node in self.hung | self.busy:
            if node not in skip:
                await self._lookup(node, "stop")
        keys = [k for k, s in self._answering().items() if s.name == name]
        for key in keys:
            stopped = self.containers.pop(key)
            if stopped.running:  # podman reports its own stops as exits too (SIGTERM: 143)...
                self.exited.put_nowait(Exit(name, stopped.node, 143))
                await asyncio.sleep(0.01)  # ...before its stop call returns
        return bool(keys)

    async def exits(self) -> AsyncGenerator[Exit, None]:
        self.streams += 1
        while True:
            yield await self.exited.get()

    def end(self, name: str, code: int | None, **how: bool) -> Exit:
        """The session's server exits by itself: its container stays, stopped, and is reported."""
        key = next(k for k, s in self.containers.items() if s.name == name)
        ended = Exit(name, self.containers[key].node, code, **how)
        self.containers[key] = replace(self.containers[key], running=False, exit=ended)
        self.exited.put_nowait(ended)
        return ended

    def running(self) -> set[str]:
        return {s.name for s in self.containers.values() if s.running}

    async def disk_usage(self, node: str) -> list[DiskUsage]:
        self._check(node)
        return [
            DiskUsage(s.name, s.launch_id, 0) for s in self.containers.values() if s.node == node
        ]

    async def close(self) -> None:
        pass

    def session(self, name: str, node: str, image: str = IMAGE, **kw: Any) -> Session:
        fields: dict[str, Any] = {"launch_id": "l", "repo": REPO, "running": True} | kw
        return Session(
            name=name,
            node=node,
            image=image,
            started=datetime.now(UTC),
            target=self.target,
            memory_reservation=GiB,
            **fields,
        )


@pytest.fixture
async def jupyter() -> AsyncIterator[str]:
    """Answers /user/<name>/api/status like a started Jupyter, except for names with 'dead'."""

    async def status(request: web.Request) -> web.Response:
        if "dead" in request.match_info["name"]:
            return web.Response(status=503)
        return web.json_response({"started": "now"})

    app = web.Application()
    app.router.add_get("/user/{name}/api/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@dataclass
class Harness:
    scheduler: Scheduler
    runtime: FakeRuntime
    events: list[Event]

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def settled(self) -> None:
        """Until the scheduler's background work (warm starts, stops) is done, including what
        that work started in turn."""
        while self.scheduler._tasks:
            await asyncio.gather(*self.scheduler._tasks)

    def loops(self, *names: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The scheduler's loops of these names, supervised as the service runs them, while
        the block runs."""
        return running_loops(self.scheduler, *names)


Make = Callable[..., Awaitable[Harness]]
E = TypeVar("E", bound=Event)


@pytest.fixture
async def make(jupyter: str) -> AsyncIterator[Make]:
    sessions: list[aiohttp.ClientSession] = []

    async def build(
        *, down: tuple[str, ...] = (), hung: tuple[str, ...] = (), **overrides: Any
    ) -> Harness:
        """A scheduler over the fake runtime, created while the nodes in `down` cannot be
        reached and those in `hung` never answer."""
        # No warm pool unless a test asks for one: tests count starts and sessions. A warm
        # session counts 1 GiB of the pool's budget, so a test's share reads as whole seats.
        defaults: dict[str, Any] = {
            "session_secret": "s" * 32,
            "startup_timeout": 0.5,
            "warm_pool_share": 0,
            "warm_session_memory": GiB,
        }
        settings = SchedulerSettings(**(defaults | overrides))
        runtime = FakeRuntime(jupyter, down=set(down), hung=set(hung))
        events: list[Event] = []

        async def publish(event: Event) -> None:
            events.append(event)

        http = aiohttp.ClientSession()
        sessions.append(http)
        scheduler = await Scheduler.create(settings, runtime, publish, http)
        return Harness(scheduler, runtime, events)

    yield build
    for http in sessions:
        await http.close()


def order(
    launch_id: str,
    image: str = IMAGE,
    *,
    repo: str = REPO,
    repo_quota: int | None = None,
    env: dict[str, str] | None = None,
) -> LaunchOrder:
    context = launch_context(
        repo_url=repo,
        resolved_ref="abc",
        repo_config=RepoConfig(quota=repo_quota),
        session_env=env or {},
    )
    return LaunchOrder(launch_id, image, context)
