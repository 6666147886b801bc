"""Disk limits: which sessions are over (pure), and what the scheduler does about them with a
fake runtime: stop those over with reason `disk` and say so, leave the rest running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest

from bindery.events import Event, PodStopped, StopReason
from bindery.runtimes import RuntimeError_
from bindery.runtimes.base import DiskUsage
from bindery.scheduler.cluster import Seat
from bindery.scheduler.disk import over_limit
from bindery.scheduler.launch import Scheduler
from bindery.scheduler.settings import SchedulerSettings
from tests.support.schedulerloops import running_loops

GiB = 1024**3
MiB = 1024**2
IMAGE = "127.0.0.1:5000/demo:abc"


def usage(name: str, written: int, *, evicted: bool = False) -> DiskUsage:
    return DiskUsage(name, f"launch-{name}", written, evicted)


# --- the decision ---------------------------------------------------------------------------


def test_sessions_over_the_limit_are_chosen_heaviest_first() -> None:
    usages = [usage("a", 60 * MiB), usage("b", 10 * MiB), usage("c", 300 * MiB)]
    assert [u.name for u in over_limit(usages, 50 * MiB)] == ["c", "a"]


def test_at_the_limit_is_not_over_it() -> None:
    assert over_limit([usage("a", 50 * MiB)], 50 * MiB) == []
    assert [u.name for u in over_limit([usage("a", 50 * MiB + 1)], 50 * MiB)] == ["a"]


def test_a_session_evicted_for_its_disk_is_over_whatever_the_limit_now_is() -> None:
    # The kubelet evicted it at the limit it started with; the setting may have grown since.
    evicted = usage("k", 10 * GiB, evicted=True)
    assert over_limit([evicted], 20 * GiB) == [evicted]


def test_a_session_podman_could_not_measure_is_not_over() -> None:
    unmeasured = DiskUsage("churner", "launch-churner", None)
    assert over_limit([unmeasured, usage("a", 60 * MiB)], 50 * MiB) == [usage("a", 60 * MiB)]


def test_a_session_reported_twice_is_chosen_once_at_its_largest() -> None:
    over = over_limit([usage("a", 60 * MiB), usage("a", 70 * MiB)], 50 * MiB)
    assert [(u.name, u.written) for u in over] == [("a", 70 * MiB)]


def test_the_default_limit_is_10_gib() -> None:
    assert SchedulerSettings().disk_limit == 10 * GiB


# --- the scheduler with a fake runtime ------------------------------------------------------


@dataclass
class FakeRuntime:
    """Nodes whose sessions wrote `written[node][name]` bytes; `broken` nodes cannot answer."""

    written: dict[str, dict[str, int]] = field(default_factory=lambda: {"node-1": {}, "node-2": {}})
    evicted: set[str] = field(default_factory=set)
    broken: dict[str, Exception] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    measured: asyncio.Event = field(default_factory=asyncio.Event)
    passes: int = 0

    def node_names(self) -> list[str]:
        return list(self.written)

    async def node_memory(self, node: str) -> int:
        return 8 * GiB

    async def disk_usage(self, node: str) -> list[DiskUsage]:
        self.passes += 1
        self.measured.set()
        if node in self.broken:
            raise self.broken[node]
        return [
            usage(name, written, evicted=name in self.evicted)
            for name, written in self.written[node].items()
        ]

    async def stop(self, name: str, skip: Collection[str] = ()) -> bool:
        self.stopped.append(name)
        return any(node.pop(name, None) is not None for node in self.written.values())

    def running(self) -> set[str]:
        return {name for node in self.written.values() for name in node}


@dataclass
class Harness:
    scheduler: Scheduler
    runtime: FakeRuntime
    events: list[Event]

    def stops(self) -> list[tuple[str, str, StopReason]]:
        return [
            (e.launch_id, e.session, e.reason) for e in self.events if isinstance(e, PodStopped)
        ]


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    sessions: list[aiohttp.ClientSession] = []

    async def build(runtime: FakeRuntime, **overrides: Any) -> Harness:
        settings = SchedulerSettings(session_secret="s" * 32, **overrides)
        events: list[Event] = []

        async def publish(event: Event) -> None:
            events.append(event)

        http = aiohttp.ClientSession()
        sessions.append(http)
        # A partial runtime (what the disk loop calls); the full fake in conftest.py is checked.
        scheduler = await Scheduler.create(settings, runtime, publish, http)  # type: ignore[arg-type]
        for node, names in runtime.written.items():
            for name in names:
                scheduler.cluster.occupy(Seat(name, node, IMAGE, GiB, repo_key="r"))
        return Harness(scheduler, runtime, events)

    yield build
    for http in sessions:
        await http.close()


async def test_a_session_over_the_limit_is_stopped_with_reason_disk_and_others_run_on(
    make: Make,
) -> None:
    runtime = FakeRuntime({"node-1": {"hog": 100 * MiB, "calm": 1 * MiB}, "node-2": {"b": 0}})
    h = await make(runtime, disk_limit=50 * MiB)

    over = await h.scheduler.check_disk()

    assert [u.name for u in over] == ["hog"]
    assert h.stops() == [("launch-hog", "hog", StopReason.DISK)]
    assert runtime.running() == {"calm", "b"}
    assert "hog" not in h.scheduler.cluster.seats, "its seat is free for the next launch"
    assert set(h.scheduler.cluster.seats) == {"calm", "b"}


async def test_under_the_limit_nothing_is_stopped(make: Make) -> None:
    runtime = FakeRuntime({"node-1": {"a": 9 * GiB}, "node-2": {"b": 10 * GiB}})
    h = await make(runtime)
    assert await h.scheduler.check_disk() == []
    assert runtime.stopped == [] and h.events == []


async def test_a_node_that_cannot_be_measured_does_not_spare_the_others(make: Make) -> None:
    runtime = FakeRuntime({"node-1": {"hog": 2 * GiB}, "node-2": {"other": 3 * GiB}})
    runtime.broken["node-2"] = RuntimeError_("node-2: GET /containers/json -> 500")
    h = await make(runtime, disk_limit=1 * GiB)
    await h.scheduler.check_disk()
    assert h.stops() == [("launch-hog", "hog", StopReason.DISK)]
    assert runtime.running() == {"other"}


async def test_a_session_the_kubelet_evicted_for_disk_is_removed_and_reported(
    make: Make,
) -> None:
    runtime = FakeRuntime({"node-1": {"k": 10 * GiB}, "node-2": {}}, evicted={"k"})
    h = await make(runtime)
    await h.scheduler.check_disk()
    assert h.stops() == [("launch-k", "k", StopReason.DISK)]


async def test_a_warm_session_over_the_limit_is_removed_without_a_stop_event(
    make: Make,
) -> None:
    runtime = FakeRuntime({"node-1": {"warm-1": 2 * GiB}, "node-2": {}})
    h = await make(runtime, disk_limit=1 * GiB)
    cluster = h.scheduler.cluster
    cluster.occupy(replace(cluster.seats["warm-1"], pool=True))
    await h.scheduler.check_disk()
    assert runtime.stopped == ["warm-1"] and h.stops() == []
    assert "warm-1" not in h.scheduler.cluster.seats


async def test_the_check_runs_on_its_own_interval_and_survives_a_failing_pass(
    make: Make,
) -> None:
    runtime = FakeRuntime({"node-1": {"hog": 2 * GiB}, "node-2": {}})
    runtime.broken["node-1"] = ValueError("a bug, not a node outage")
    h = await make(runtime, disk_limit=1 * GiB, disk_check_interval=0.01)
    async with running_loops(h.scheduler, "disk"):
        await asyncio.wait_for(runtime.measured.wait(), 5)
        del runtime.broken["node-1"]
        async with asyncio.timeout(5):
            while not h.stops():
                runtime.measured.clear()
                await runtime.measured.wait()
    assert h.stops() == [("launch-hog", "hog", StopReason.DISK)]


async def test_the_limit_travels_with_every_session_it_starts(make: Make) -> None:
    h = await make(FakeRuntime(), disk_limit=50 * MiB)
    assert h.scheduler.limits.disk == 50 * MiB
