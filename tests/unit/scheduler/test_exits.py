"""Sessions that end by themselves: the reason each gets (pure), and what the scheduler does when
the runtime reports an exit or its listing shows one it never reported: the seat is free at
once, the container removed, pod-stopped says why; warm sessions are only released; Bindery's
own stops say why once; a launch still starting fails at once instead of timing out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from bindery.events import (
    FailureReason,
    IdleDetected,
    LaunchFailed,
    LaunchQueued,
    PodReady,
    PodStopped,
    StopReason,
)
from bindery.naming import session_name
from bindery.runtimes import Session
from bindery.runtimes.base import Exit
from bindery.scheduler.cluster import Seat
from bindery.scheduler.exits import ended_sessions, stop_reason
from bindery.scheduler.launch import LaunchOrder
from tests.support.eventually import eventually
from tests.support.launches import launch_context
from tests.unit.scheduler.conftest import IMAGE, REPO, Harness, Make, order

GiB = 1024**3


# --- the decisions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ended", "reason"),
    [
        (Exit("s", "n", 0), StopReason.SHUT_DOWN),
        (Exit("s", "n", 1), StopReason.CRASHED),
        (Exit("s", "n", 137), StopReason.CRASHED),
        (Exit("s", "n", None), StopReason.CRASHED),
        (Exit("s", "n", 137, oom_killed=True), StopReason.OOM),
        (Exit("s", "n", 137, disk_evicted=True), StopReason.DISK),
    ],
)
def test_the_reason_follows_what_the_runtime_saw(ended: Exit, reason: StopReason) -> None:
    assert stop_reason(ended) is reason


def session(name: str, running: bool = True, ended: Exit | None = None) -> Session:
    return Session(name, "node-1", "l", IMAGE, REPO, datetime.now(UTC), "", running, exit=ended)


def test_seats_whose_session_stopped_or_vanished_are_the_ended_ones() -> None:
    seats = [Seat(name, "node-1", IMAGE, GiB) for name in ("live", "shut", "gone", "blank")]
    shut = Exit("shut", "node-1", 0)
    listed = [
        session("live"),
        session("shut", running=False, ended=shut),
        session("blank", running=False),  # not running, nothing known of its end
        session("other"),  # no seat: not this check's business
    ]
    assert ended_sessions(seats, listed) == [
        shut,
        Exit("gone", "node-1"),
        Exit("blank", "node-1"),
    ]


# --- the scheduler --------------------------------------------------------------------------


def stops(h: Harness) -> list[tuple[str, str, StopReason]]:
    return [(e.launch_id, e.session, e.reason) for e in h.of(PodStopped)]


async def test_a_session_shut_down_from_inside_frees_its_seat_for_the_waiting_launch(
    make: Make,
) -> None:
    h: Harness = await make(repo_quota=1, queue_timeout=60)
    await h.scheduler.launch(order("L1"))
    waiting = asyncio.create_task(h.scheduler.launch(order("L2")))
    await eventually(lambda: h.of(LaunchQueued), within=10, what="a LaunchQueued")
    first = session_name(REPO, "L1")
    async with h.loops("exits"):
        h.runtime.end(first, 0)
        await asyncio.wait_for(waiting, 10)
    assert stops(h) == [("L1", first, StopReason.SHUT_DOWN)]
    assert first not in h.runtime.containers, "its container is removed"
    assert [r.launch_id for r in h.of(PodReady)] == ["L1", "L2"]
    assert set(h.scheduler.cluster.seats) == h.runtime.running() == {session_name(REPO, "L2")}


async def test_a_session_bindery_stops_says_why_once(make: Make) -> None:
    h: Harness = await make()
    await h.scheduler.launch(order("L1"))
    name = session_name(REPO, "L1")
    async with h.loops("exits"):
        # Its exit (143) reaches the loop while the stop is still under way.
        await h.scheduler.stop(IdleDetected(launch_id="L1", session=name, reason=StopReason.IDLE))
        assert h.runtime.exited.empty()
        await h.scheduler.stop(IdleDetected(launch_id="L1", session=name, reason=StopReason.IDLE))
    assert stops(h) == [("L1", name, StopReason.IDLE)]


async def test_a_warm_session_that_ends_is_released_without_a_stop_event(make: Make) -> None:
    h: Harness = await make(warm_pool_share=0.25)  # one 1 GiB seat of 4 GiB
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    h.scheduler.fill_pool()
    await h.settled()
    [warm] = await h.runtime.list_warm()
    async with h.loops("exits"):
        h.runtime.end(warm.name, 1)
        await eventually(
            lambda: warm.name not in h.scheduler.cluster.seats,
            within=10,
            what="the warm session's seat freed",
        )
    assert stops(h) == [] and warm.name not in h.runtime.running()


async def test_a_session_ending_while_its_launch_starts_fails_the_launch_at_once(
    make: Make,
) -> None:
    repo = "https://example.org/dead"  # its Jupyter never answers: only the exit ends the wait
    h: Harness = await make(startup_timeout=120)
    launching = asyncio.create_task(
        h.scheduler.launch(LaunchOrder("L1", IMAGE, launch_context(repo_url=repo)))
    )
    await eventually(h.runtime.running, within=10, what="a session running")
    async with h.loops("exits"):
        h.runtime.end(session_name(repo, "L1"), 127)
        await asyncio.wait_for(launching, 30)
    [failed] = h.of(LaunchFailed)
    assert failed.reason == FailureReason.START_FAILED and "exited (status 127)" in failed.message
    assert h.runtime.containers == {} and h.scheduler.cluster.seats == {}
    assert stops(h) == [], "never ready: the launch's failure says it all"


async def test_an_exit_the_runtime_never_reported_is_found_by_reconciliation(make: Make) -> None:
    h: Harness = await make(startup_timeout=120)
    for launch in ("L1", "L2", "L3"):
        await h.scheduler.launch(order(launch))
    shut, gone, live = (session_name(REPO, launch) for launch in ("L1", "L2", "L3"))
    h.runtime.end(shut, 0)
    del h.runtime.containers[gone]  # removed outside Bindery, no event
    starting = asyncio.create_task(h.scheduler.launch(order("dead-L4", IMAGE)))
    await eventually(lambda: len(h.runtime.starts) == 4, within=10, what="four starts")
    h.runtime.containers.pop(session_name(REPO, "dead-L4"))  # a launch in progress: its own

    ended = await h.scheduler.end_vanished()

    assert {e.name for e in ended} == {shut, gone}
    assert sorted(stops(h)) == [("L1", shut, StopReason.SHUT_DOWN), ("L2", gone, "crashed")]
    assert set(h.scheduler.cluster.seats) == {live, session_name(REPO, "dead-L4")}
    assert await h.scheduler.end_vanished() == [], "each once"
    starting.cancel()


async def test_the_exits_loop_survives_a_failing_handling_and_keeps_its_stream(
    make: Make,
) -> None:
    h: Harness = await make()
    await h.scheduler.launch(order("L1"))
    real = h.scheduler.session_exited
    calls = 0

    async def flaky(ended: Exit) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug, not an outage")
        await real(ended)

    h.scheduler.session_exited = flaky  # type: ignore[method-assign]
    name = session_name(REPO, "L1")
    async with h.loops("exits"):
        h.runtime.exited.put_nowait(Exit(name, "node-1", 0))  # its handling fails
        h.runtime.end(name, 0)  # reported again (podman repeats after a break)
        await eventually(lambda: h.of(PodStopped), within=30, what="a PodStopped")
    assert stops(h) == [("L1", name, StopReason.SHUT_DOWN)]
    assert h.runtime.streams == 1, "one stream followed throughout"
