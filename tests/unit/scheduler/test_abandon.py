"""Abandoned launches (every client left before ready): one waiting in the queue leaves it and
starts nothing; one starting has its session stopped and never says ready; one that reaches the
scheduler after its abandonment starts nothing; once ready, abandonment changes nothing."""

from __future__ import annotations

import asyncio

from bindery.events import (
    IdleDetected,
    LaunchAbandoned,
    LaunchFailed,
    LaunchQueued,
    PodReady,
    PodScheduled,
    PodStopped,
    StopReason,
)
from bindery.naming import session_name
from bindery.scheduler.launch import LaunchOrder
from tests.support.eventually import eventually
from tests.support.launches import launch_context
from tests.unit.scheduler.conftest import IMAGE, REPO, Harness, Make, order


def abandoned(launch_id: str) -> LaunchAbandoned:
    return LaunchAbandoned(launch_id=launch_id)


async def test_a_launch_abandoned_in_the_queue_leaves_it_and_starts_nothing(make: Make) -> None:
    h: Harness = await make(repo_quota=1, queue_timeout=60)
    await h.scheduler.launch(order("L1"))
    waiting = asyncio.create_task(h.scheduler.launch(order("L2")))
    behind = asyncio.create_task(h.scheduler.launch(order("L3")))
    await eventually(lambda: len(h.of(LaunchQueued)) == 2, within=10, what="both launches queued")

    await h.scheduler.abandon(abandoned("L2"))
    await asyncio.wait_for(waiting, 10)

    assert [e for e in h.events if e.launch_id == "L2"] == [h.of(LaunchQueued)[0]]
    assert h.scheduler.admission.waiters[0].name == session_name(REPO, "L3")
    await eventually(
        lambda: h.of(LaunchQueued)[-1].position == 1, within=10, what="L3 moved up the queue"
    )  # L3 moved up
    first = session_name(REPO, "L1")
    await h.scheduler.stop(IdleDetected(launch_id="L1", session=first, reason=StopReason.IDLE))
    await asyncio.wait_for(behind, 10)
    assert [r.launch_id for r in h.of(PodReady)] == ["L1", "L3"]
    assert len(h.runtime.starts) == 2


async def test_a_launch_abandoned_while_it_starts_has_its_session_stopped(make: Make) -> None:
    repo = "https://example.org/dead"  # its Jupyter never answers: it stays starting
    h: Harness = await make(startup_timeout=120)
    h.runtime.images["node-1"].add(IMAGE)
    launching = asyncio.create_task(
        h.scheduler.launch(LaunchOrder("L1", IMAGE, launch_context(repo_url=repo)))
    )
    await eventually(h.runtime.running, within=10, what="a session running")

    await h.scheduler.abandon(abandoned("L1"))
    await asyncio.wait_for(launching, 30)

    name = session_name(repo, "L1")
    assert [type(e) for e in h.events] == [PodScheduled, PodStopped]
    assert h.of(PodStopped)[0].reason is StopReason.ABANDONED
    assert h.runtime.containers == {} and h.scheduler.cluster.seats == {}
    assert h.of(PodStopped)[0].session == name and h.of(LaunchFailed) == []


async def test_a_launch_abandoned_before_it_arrives_starts_nothing(make: Make) -> None:
    h: Harness = await make()
    await h.scheduler.abandon(abandoned("L1"))  # e.g. during its build
    await h.scheduler.launch(order("L1"))  # its image-built
    assert h.events == [] and h.runtime.starts == [] and h.scheduler.cluster.seats == {}


async def test_a_ready_launch_is_no_longer_abandoned(make: Make) -> None:
    h: Harness = await make()
    await h.scheduler.launch(order("L1"))
    await h.scheduler.abandon(abandoned("L1"))
    assert h.runtime.running() == {session_name(REPO, "L1")} and h.of(PodStopped) == []
