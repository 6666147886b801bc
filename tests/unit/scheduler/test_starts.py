"""Each node's start line: its order (request time, then arrival; launches before warm starts),
the places it reports, and that a turn always comes back (done, failed, cancelled, abandoned).
First as pure logic, then through the scheduler against the fake runtime."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bindery.events import LaunchAbandoned, LaunchQueued, PodReady, QueueLimit
from bindery.runtimes import Session, SessionSpec
from bindery.scheduler.launch import LaunchOrder
from bindery.scheduler.starts import Priority, StartLine, Turn
from tests.support.eventually import eventually
from tests.support.launches import launch_context
from tests.unit.scheduler.conftest import IMAGE, REPO, GiB, Harness, Make

EARLY = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return EARLY + timedelta(seconds=seconds)


def granted(line: StartLine, *turns: Turn) -> list[bool]:
    return [turn.granted for turn in turns]


def test_a_node_runs_at_most_its_concurrency_and_the_next_goes_when_one_leaves() -> None:
    line = StartLine(concurrency=2)
    first, second, third = (line.join("n1", Priority.LAUNCH, at(i)) for i in range(3))
    other_node = line.join("n2", Priority.LAUNCH, at(9))
    assert granted(line, first, second, third, other_node) == [True, True, False, True]
    assert third.position == 1
    line.leave(second)
    assert third.granted and third.position == 0
    for turn in (first, third, other_node):
        line.leave(turn)
    assert not line.running and not line.waiting


def test_waiting_launches_go_in_request_order_not_arrival_order() -> None:
    line = StartLine(concurrency=1)
    holder = line.join("n1", Priority.LAUNCH, at(0))
    late = line.join("n1", Priority.LAUNCH, at(3))
    early = line.join("n1", Priority.LAUNCH, at(1))
    same_time = line.join("n1", Priority.LAUNCH, at(1))  # arrived after `early`
    assert [early.position, same_time.position, late.position] == [1, 2, 3]
    order = []
    for turn in (holder, early, same_time):
        line.leave(turn)
        order.append(next(t for t in (early, same_time, late) if t.granted and t not in order))
    assert order == [early, same_time, late]


def test_launches_go_before_warm_starts_and_warm_ones_have_no_place_to_report() -> None:
    line = StartLine(concurrency=1)
    holder = line.join("n1", Priority.LAUNCH, at(0))
    warm = line.join("n1", Priority.WARM)
    launch = line.join("n1", Priority.LAUNCH, at(5))
    assert (launch.position, warm.position) == (1, 0)
    line.leave(holder)
    assert granted(line, launch, warm) == [True, False]
    line.leave(launch)
    assert warm.granted


def test_a_turn_that_leaves_while_waiting_moves_the_others_up() -> None:
    line = StartLine(concurrency=1)
    line.join("n1", Priority.LAUNCH, at(0))
    leaving, staying = line.join("n1", Priority.LAUNCH, at(1)), line.join("n1", Priority.LAUNCH)
    assert staying.position == 2
    line.leave(leaving)
    line.leave(leaving)  # twice (a context manager's exit after an explicit leave) is harmless
    assert staying.position == 1 and line.running["n1"] == 1


async def test_wait_reports_every_new_position_then_returns_when_granted() -> None:
    line = StartLine(concurrency=1)
    holder = line.join("n1", Priority.LAUNCH, at(0))
    ahead = line.join("n1", Priority.LAUNCH, at(1))
    reported: list[int] = []

    async def notify(position: int) -> None:
        reported.append(position)

    with line.join("n1", Priority.LAUNCH, at(2)) as turn:
        waiting = asyncio.create_task(turn.wait(notify))
        await eventually(lambda: reported == [2], within=10, what="place 2 reported")
        line.leave(holder)
        await eventually(lambda: reported == [2, 1], within=10, what="place 1 reported next")
        line.leave(ahead)
        await asyncio.wait_for(waiting, 10)
    assert reported == [2, 1] and not line.running


async def test_a_cancelled_wait_gives_its_place_or_its_granted_slot_back() -> None:
    line = StartLine(concurrency=1)
    holder = line.join("n1", Priority.LAUNCH, at(0))
    with line.join("n1", Priority.LAUNCH, at(1)) as turn:
        waiting = asyncio.create_task(turn.wait())
        await asyncio.sleep(0)
        line.leave(holder)  # granted, but cancelled before the waiter saw it
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert not line.running and not line.waiting


# --- through the scheduler ---------------------------------------------------------------


class Gate:
    """Holds every session start of the fake runtime until opened, recording their order;
    the starts of launches in `failing` then fail with an error nobody expected."""

    def __init__(self, h: Harness) -> None:
        self.opened = asyncio.Event()
        self.started: list[str] = []
        self.failing: set[str] = set()
        start = h.runtime.start

        async def held_start(node: str, spec: SessionSpec) -> Session:
            self.started.append(spec.launch_id)
            await self.opened.wait()
            if spec.launch_id in self.failing:
                raise RuntimeError("the node went away")
            return await start(node, spec)

        h.runtime.start = held_start  # type: ignore[method-assign]


def launch_order(launch_id: str, requested: float) -> LaunchOrder:
    return LaunchOrder(launch_id, IMAGE, launch_context(repo_url=REPO, requested_at=at(requested)))


async def one_node_harness(make: Make, **settings: Any) -> Harness:
    """Room for several sessions, and the image on node-1 only, so every launch lands there."""
    h: Harness = await make(start_concurrency=1, node_memory=8 * GiB, **settings)
    h.runtime.images["node-1"].add(IMAGE)
    return h


async def test_launches_wait_their_turn_told_their_place_and_start_in_request_order(
    make: Make,
) -> None:
    h = await one_node_harness(make)
    gate = Gate(h)
    first = asyncio.create_task(h.scheduler.launch(launch_order("L1", 0)))
    await eventually(lambda: gate.started == ["L1"], within=10, what="L1 starting")
    late = asyncio.create_task(h.scheduler.launch(launch_order("L3", 3)))
    await eventually(
        lambda: len(h.of(LaunchQueued)) == 1, within=10, what="one launch told its place"
    )
    early = asyncio.create_task(h.scheduler.launch(launch_order("L2", 2)))
    await eventually(
        lambda: len(h.of(LaunchQueued)) == 3, within=10, what="three launches told their place"
    )
    told = [(q.launch_id, q.position, q.limit) for q in h.of(LaunchQueued)]
    starting = QueueLimit.STARTING
    assert told[0] == ("L3", 1, starting)
    assert sorted(told[1:]) == [("L2", 1, starting), ("L3", 2, starting)], "L2 went ahead"
    assert gate.started == ["L1"], "one start at a time on the node"
    gate.opened.set()
    await asyncio.wait_for(asyncio.gather(first, early, late), 10)
    assert gate.started == ["L1", "L2", "L3"]
    assert [r.launch_id for r in h.of(PodReady)] == ["L1", "L2", "L3"]
    assert not h.scheduler.starts.running and not h.scheduler.starts.waiting


async def test_an_abandoned_launch_leaves_the_line_and_a_failed_start_frees_its_slot(
    make: Make,
) -> None:
    h = await one_node_harness(make)
    gate = Gate(h)
    failing = asyncio.create_task(h.scheduler.launch(launch_order("L1", 0)))
    await eventually(lambda: gate.started == ["L1"], within=10, what="L1 starting")
    leaving = asyncio.create_task(h.scheduler.launch(launch_order("L2", 1)))
    staying = asyncio.create_task(h.scheduler.launch(launch_order("L3", 2)))
    await eventually(
        lambda: len([q for q in h.of(LaunchQueued) if q.launch_id == "L3"]) == 1,
        within=10,
        what="L3 told its place",
    )
    await h.scheduler.abandon(LaunchAbandoned(launch_id="L2"))
    await asyncio.wait_for(leaving, 10)
    assert [q.position for q in h.of(LaunchQueued) if q.launch_id == "L3"] == [2, 1]
    gate.failing.add("L1")
    gate.opened.set()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(failing, 10)
    await asyncio.wait_for(staying, 10)
    assert gate.started == ["L1", "L3"], "the abandoned launch started nothing"
    assert [r.launch_id for r in h.of(PodReady)] == ["L3"]
    assert not h.scheduler.starts.running and not h.scheduler.starts.waiting


async def test_a_cancelled_launch_gives_its_turn_back(make: Make) -> None:
    h = await one_node_harness(make)
    gate = Gate(h)
    holder = asyncio.create_task(h.scheduler.launch(launch_order("L1", 0)))
    await eventually(lambda: gate.started == ["L1"], within=10, what="L1 starting")
    holder.cancel()  # as a consumer stopping mid-start does
    with pytest.raises(asyncio.CancelledError):
        await holder
    gate.opened.set()
    await asyncio.wait_for(h.scheduler.launch(launch_order("L2", 1)), 10)
    assert [r.launch_id for r in h.of(PodReady)] == ["L2"]
    assert not h.scheduler.starts.running


async def test_warm_starts_wait_behind_launches(make: Make) -> None:
    h = await one_node_harness(make, warm_pool_share=0.0625)  # one 1 GiB seat of 16 GiB
    gate = Gate(h)
    holder = asyncio.create_task(h.scheduler.launch(launch_order("L1", 0)))
    await eventually(lambda: gate.started == ["L1"], within=10, what="L1 starting")
    h.scheduler.popularity.record(IMAGE, REPO, {})
    h.scheduler.fill_pool()
    await eventually(
        lambda: len(h.scheduler.starts.waiting["node-1"]) == 1,
        within=10,
        what="one start waiting on node-1",
    )
    launch = asyncio.create_task(h.scheduler.launch(launch_order("L2", 1)))
    await eventually(lambda: h.of(LaunchQueued), within=10, what="a launch told its place")
    assert h.of(LaunchQueued)[0].position == 1, "the warm start waiting earlier is not ahead"
    gate.opened.set()
    await asyncio.wait_for(asyncio.gather(holder, launch, h.settled()), 10)
    assert gate.started[:2] == ["L1", "L2"] and len(gate.started) == 3
