"""The scheduler's launch flow against a fake runtime: events a user's progress stream shows,
no twin on redelivery, reconciliation, warm pool claims. Jupyter is a local HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from bindery.events import (
    Event,
    FailureReason,
    IdleDetected,
    ImagePulling,
    LaunchFailed,
    LaunchQueued,
    PodReady,
    PodScheduled,
    StopReason,
)
from bindery.naming import session_name
from bindery.runtimes import Session, SessionSpec
from bindery.runtimes.base import DiskUsage
from bindery.scheduler.launch import LaunchOrder, Scheduler
from bindery.scheduler.settings import SchedulerSettings

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

    def node_names(self) -> list[str]:
        return list(self.images)

    async def node_memory(self, node: str) -> int:
        return 2 * GiB

    async def list_sessions(self) -> list[Session]:
        return [s for s in self.containers.values() if not s.warm]

    async def list_warm(self) -> list[Session]:
        return [s for s in self.containers.values() if s.warm]

    async def get(self, key: str) -> Session | None:
        return self.containers.get(key)

    async def has_image(self, node: str, image: str) -> bool:
        return image in self.images[node]

    async def pull(self, node: str, image: str) -> None:
        self.pulls.append((node, image))
        self.images[node].add(image)

    async def start(self, node: str, spec: SessionSpec) -> Session:
        self.starts.append((node, spec))
        session = self.session(spec.name, node, spec.image, warm=spec.warm)
        self.containers[f"warm-{spec.name}" if spec.warm else spec.name] = session
        return session

    async def claim(self, warm: Session, key: str) -> Session:
        session = replace(self.containers.pop(f"warm-{warm.name}"), warm=False)
        self.containers[key] = session
        return session

    async def stop(self, name: str) -> bool:
        keys = [k for k, s in self.containers.items() if s.name == name]
        for key in keys:
            del self.containers[key]
        return bool(keys)

    async def disk_usage(self, node: str) -> list[DiskUsage]:
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


Make = Callable[..., Awaitable[Harness]]
E = TypeVar("E", bound=Event)


@pytest.fixture
async def make(jupyter: str) -> AsyncIterator[Make]:
    sessions: list[aiohttp.ClientSession] = []

    async def build(**overrides: Any) -> Harness:
        settings = SchedulerSettings(session_secret="s" * 32, startup_timeout=0.5, **overrides)
        runtime = FakeRuntime(jupyter)
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


def order(launch_id: str, image: str = IMAGE) -> LaunchOrder:
    return LaunchOrder(launch_id, image, REPO, "abc", REPO)


async def test_launch_lands_on_the_node_holding_the_image(make: Make) -> None:
    h: Harness = await make()
    h.runtime.images["node-2"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    assert [node for node, _ in h.runtime.starts] == ["node-2"]
    assert h.of(ImagePulling) == [] and h.runtime.pulls == []
    ready = h.of(PodReady)
    assert len(ready) == 1 and ready[0].session == session_name(REPO, "L1")


async def test_no_holder_means_a_pull_the_user_sees_then_later_launches_skip_it(make: Make) -> None:
    h: Harness = await make()
    await h.scheduler.launch(order("L1"))
    pulling = h.of(ImagePulling)
    assert len(pulling) == 1 and h.runtime.pulls == [(pulling[0].node, IMAGE)]
    kinds = [type(e) for e in h.events]
    assert kinds == [ImagePulling, PodScheduled, PodReady]
    await h.scheduler.launch(order("L2"))
    assert len(h.runtime.pulls) == 1


async def test_a_redelivered_launch_resumes_its_session_instead_of_a_twin(make: Make) -> None:
    h: Harness = await make()
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L1"))
    assert len(h.runtime.starts) == 1 and len(h.runtime.containers) == 1
    assert len(h.of(PodReady)) == 2, "each delivery answers, so the gateway always hears"
    assert h.scheduler.cluster.launched_sessions() == 1


async def test_over_quota_the_launch_reports_its_place_then_fails_with_the_reason(
    make: Make,
) -> None:
    h: Harness = await make(repo_quota=1, queue_timeout=0.2)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L2"))
    queued = h.of(LaunchQueued)
    assert [(q.position, q.limit) for q in queued] == [(1, "repository")]
    failed = h.of(LaunchFailed)
    assert len(failed) == 1 and failed[0].reason == FailureReason.NO_CAPACITY
    assert "limit" in failed[0].message and "try again" in failed[0].message


async def test_a_stop_frees_the_seat_for_the_waiting_launch(make: Make) -> None:
    h: Harness = await make(repo_quota=1, queue_timeout=5)
    await h.scheduler.launch(order("L1"))
    waiting = asyncio.create_task(h.scheduler.launch(order("L2")))
    while not h.of(LaunchQueued):
        await asyncio.sleep(0.01)
    first = session_name(REPO, "L1")
    await h.scheduler.stop(IdleDetected(launch_id="L1", session=first, reason=StopReason.IDLE))
    await waiting
    assert [e.session for e in h.of(PodReady)] == [first, session_name(REPO, "L2")]


async def test_a_session_that_never_answers_fails_the_launch_and_is_removed(make: Make) -> None:
    h: Harness = await make()
    repo = "https://example.org/dead"
    await h.scheduler.launch(LaunchOrder("L1", IMAGE, repo, "abc", repo))
    failed = h.of(LaunchFailed)
    assert len(failed) == 1 and failed[0].reason == FailureReason.START_FAILED
    assert h.runtime.containers == {} and h.scheduler.cluster.seats == {}


async def test_reconcile_adopts_live_sessions_and_removes_the_dead(make: Make) -> None:
    h: Harness = await make()
    live, stopped, hung = "live-1", "gone-1", "dead-1"
    h.runtime.containers[live] = h.runtime.session(live, "node-1")
    h.runtime.containers[stopped] = h.runtime.session(stopped, "node-2", running=False)
    h.runtime.containers[hung] = h.runtime.session(hung, "node-2")
    await h.scheduler.reconcile()
    assert stopped not in h.runtime.containers
    assert set(h.scheduler.cluster.seats) == {live, hung}
    await asyncio.gather(*h.scheduler._tasks)
    assert set(h.runtime.containers) == {live}, "never answered, no launch came back: orphan"
    assert set(h.scheduler.cluster.seats) == {live}


async def test_a_launch_is_served_from_the_warm_pool(make: Make) -> None:
    h: Harness = await make(warm_pool_size=1)
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.maintain()
    warm = await h.runtime.list_warm()
    assert len(warm) == 1
    starts = len(h.runtime.starts)
    await h.scheduler.launch(order("L2"))
    ready = h.of(PodReady)[-1]
    assert ready.session == warm[0].name, "the token is derived from the name Jupyter runs under"
    assert len(h.runtime.starts) == starts, "no container started for the launch"
    assert await h.runtime.get(session_name(REPO, "L2")) is not None
    await h.scheduler.launch(order("L2"))
    assert h.of(PodReady)[-1].session == warm[0].name, "a redelivery finds the claimed session"
