"""A node that takes requests and never answers them (its podman service stopped), and one that
answers its ping but its lookups late (busy: a big pull holds its storage lock), against the
scheduler over a fake runtime whose lookups give up after a short bound.

A hung node costs a launch its lookup bound once: its ping fails meanwhile (the `nodes` loop),
so it is down, asked nothing more and used again as soon as it answers. A busy node is not down:
what it did not say in time is unknown (not a holder of the image; its sessions neither gone nor
lost). A session said stopped before a restart is not said stopped again when its node is back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection
from dataclasses import replace
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from bindery.bus import eventlog
from bindery.events import Event, PodReady, PodStopped, StopReason
from bindery.naming import session_name
from bindery.runtimes.base import Exit
from bindery.scheduler import handlers
from tests.support.eventually import eventually
from tests.unit.scheduler.conftest import IMAGE, REPO, GiB, Harness, Make, order

LOOKUP = 1.5
"""The fake runtime's lookup bound, in seconds: past its ping bound (0.1 s) and the `nodes`
loop's interval (1 s), as podman's 10 s are past its 5 s and that 1 s."""


def node_up(node: str) -> float | None:
    return REGISTRY.get_sample_value("bindery_node_up", {"node": node})


def placed(h: Harness) -> list[str]:
    return [node for node, _ in h.runtime.starts]


async def test_a_hung_node_holds_a_launch_up_once_then_is_down_skipped_and_used_when_back(
    make: Make,
) -> None:
    h: Harness = await make(node_memory=4 * GiB)
    h.runtime.lookup_seconds = LOOKUP
    for node in ("node-1", "node-2"):
        h.runtime.images[node].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    async with h.loops("nodes"):
        h.runtime.hung.add("node-2")  # the emptiest holder now, for the launch that comes
        began = time.monotonic()
        await h.scheduler.launch(order("L2"))
        took = time.monotonic() - began
        # Its session and its image's holders asked at once, of every node at once: one bound;
        # by then node-2 failed its ping, so it is not asked again.
        assert took < 1.5 * LOOKUP, f"{took:.2f} s: the hung node was waited for more than once"
        assert placed(h) == ["node-1", "node-1"], "unknown on the hung node: not a holder"
        assert [e.launch_id for e in h.of(PodReady)] == ["L1", "L2"]
        assert "node-2" in h.scheduler.cluster.down_since, "its ping failed"
        assert node_up("node-2") == 0

        h.runtime.asked.clear()
        began = time.monotonic()
        await h.scheduler.launch(order("L3"))
        assert time.monotonic() - began < LOOKUP / 2, "the down node held the launch up"
        assert [node for node, _ in h.runtime.asked] == ["node-1"], "nothing asked of node-2"

        h.runtime.hung.clear()
        await eventually(lambda: not h.scheduler.cluster.down_since, within=10, what="node-2 back")
        assert node_up("node-2") == 1
    await h.scheduler.launch(order("L4"))
    assert placed(h)[-1] == "node-2", "used again at once: the emptiest node"


async def test_a_node_hung_at_start_is_measured_and_used_as_soon_as_it_answers(
    make: Make,
) -> None:
    h: Harness = await make(hung=("node-2",))
    assert h.scheduler.cluster.capacity == {"node-1": 2 * GiB, "node-2": 0}
    h.runtime.hung.clear()
    async with h.loops("nodes"):
        await eventually(
            lambda: h.scheduler.cluster.capacity["node-2"] == 2 * GiB,
            within=10,
            what="node-2's memory read once it answers",
        )
    h.runtime.images["node-2"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    assert placed(h) == ["node-2"]


async def test_a_busy_node_is_not_down_and_what_it_did_not_say_is_unknown_not_gone(
    make: Make,
) -> None:
    h: Harness = await make(node_memory=4 * GiB, node_lost_seconds=0.1)
    for node in ("node-1", "node-2"):
        h.runtime.images[node].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L2"))
    first, second = session_name(REPO, "L1"), session_name(REPO, "L2")
    assert placed(h) == ["node-1", "node-2"]

    h.runtime.busy.add("node-2")
    async with h.loops("nodes", "reconcile"):
        for _ in range(3):
            assert await h.scheduler.end_vanished() == [], "its unlisted session is not gone"
        assert h.scheduler.cluster.down_since == {}, "it answers its ping: not down"
        assert node_up("node-2") == 1
        h.runtime.asked.clear()
        await h.scheduler.launch(order("L3"))
    assert placed(h)[-1] == "node-1", "its image unknown: not a holder for this placement"
    assert h.runtime.asked.count(("node-2", "get")) == 2, "asked for the session once more"
    assert h.of(PodStopped) == [], "neither vanished nor lost"
    assert set(h.scheduler.cluster.seats) >= {first, second}
    assert [e.launch_id for e in h.of(PodReady)] == ["L1", "L2", "L3"]


async def test_a_session_said_lost_before_a_restart_is_not_said_stopped_again_when_back(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    before: Harness = await make(node_memory=4 * GiB, node_lost_seconds=0.1)
    for node in ("node-1", "node-2"):
        before.runtime.images[node].add(IMAGE)
    await before.scheduler.launch(order("L1"))
    await before.scheduler.launch(order("L2"))
    lost = session_name(REPO, "L2")
    before.runtime.down.add("node-2")  # the machine's power goes
    await before.scheduler.end_vanished()
    before.scheduler.clock = lambda: time.monotonic() + 1  # past the grace
    await before.scheduler.end_vanished()
    assert [(e.session, e.reason) for e in before.of(PodStopped)] == [(lost, StopReason.NODE_LOST)]

    # A new scheduler starts while node-2 is still down; its session died with the power.
    async def recent(url: str, window: timedelta, types: Collection[str]) -> AsyncIterator[Event]:
        for event in before.events:
            if event.type in types:
                yield event

    monkeypatch.setattr(eventlog, "recent", recent)
    after: Harness = await make(node_memory=4 * GiB, down=("node-2",))
    after.runtime.containers = before.runtime.containers
    key = next(k for k, s in after.runtime.containers.items() if s.name == lost)
    after.runtime.containers[key] = replace(
        after.runtime.containers[key], running=False, exit=Exit(lost, "node-2", 137)
    )
    await handlers.replay_recent("amqp://", after.scheduler, timedelta(hours=1))
    await after.scheduler.reconcile()

    after.runtime.down.clear()
    await after.scheduler.end_vanished()
    await after.settled()
    assert lost not in after.runtime.containers, "its container removed"
    assert after.of(PodStopped) == [], "said stopped once, before the restart"


async def test_sessions_of_a_node_too_busy_to_list_them_at_start_are_taken_over_later(
    make: Make,
) -> None:
    h: Harness = await make(node_memory=4 * GiB)
    for name, node in (("quick", "node-1"), ("late", "node-2")):
        h.runtime.containers[name] = h.runtime.session(name, node)
    h.runtime.busy.add("node-2")
    await h.scheduler.reconcile()
    assert set(h.scheduler.cluster.seats) == {"quick"}
    assert h.scheduler.cluster.down_since == {}, "busy, not down"

    h.runtime.busy.clear()
    assert await h.scheduler.end_vanished() == []
    assert set(h.scheduler.cluster.seats) == {"quick", "late"}, "taken over once listed"
    assert h.of(PodStopped) == []
