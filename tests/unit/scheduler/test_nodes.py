"""A node that stops answering: the cluster's record of it (pure), and the scheduler against a
fake runtime whose nodes can go down: nothing new is placed there, its sessions keep their seats
within the grace and are ended as lost (once) after it, and a node that comes back is used again,
with what it still ran that was ended stopped and what the scheduler never knew adopted."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from bindery.events import (
    LaunchFailed,
    LaunchQueued,
    PodReady,
    PodStopped,
    StopReason,
)
from bindery.naming import session_name
from bindery.scheduler.cluster import Cluster, Seat
from tests.support.eventually import eventually
from tests.unit.scheduler.conftest import IMAGE, REPO, GiB, Harness, Make, order

GRACE = 60.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the record -------------------------------------------------------------------------------


def test_the_cluster_records_nodes_going_down_and_coming_back() -> None:
    cluster = Cluster({"node-1": 4 * GiB, "node-2": 4 * GiB})
    assert cluster.observe([], 0) == ([], [])
    assert cluster.observe(["node-2"], 10) == (["node-2"], [])
    assert cluster.observe(["node-2"], 40) == ([], []), "down since its first miss"
    assert cluster.lost(70, GRACE) == []
    assert cluster.lost(71, GRACE) == ["node-2"]
    assert cluster.observe([], 80) == ([], ["node-2"])
    assert cluster.lost(1000, GRACE) == []


def test_nothing_is_placed_or_claimed_on_a_node_that_does_not_answer() -> None:
    cluster = Cluster({"node-1": 1 * GiB, "node-2": 4 * GiB})
    cluster.learn_image("node-2", IMAGE)
    cluster.observe(["node-2"], 0)
    choice = cluster.choose(IMAGE, GiB)
    assert choice is not None and choice.node == "node-1", "the emptiest holder is down"
    cluster.occupy(Seat("s1", "node-1", IMAGE, GiB))
    assert cluster.choose(IMAGE, GiB) is None, "full but for the down node: wait as when full"


# --- the scheduler ----------------------------------------------------------------------------


def stops(h: Harness) -> list[tuple[str, StopReason]]:
    return [(e.session, e.reason) for e in h.of(PodStopped)]


def node_up(node: str) -> float | None:
    return REGISTRY.get_sample_value("bindery_node_up", {"node": node})


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def two_nodes_one_down(make: Make, clock: Clock) -> tuple[Harness, str, str]:
    """A session on each node, then node-2 stops answering and a reconcile pass notices."""
    h: Harness = await make(node_lost_seconds=GRACE, node_memory=4 * GiB)
    h.scheduler.clock = clock
    h.runtime.images["node-1"].add(IMAGE)
    h.runtime.images["node-2"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L2"))
    first, second = session_name(REPO, "L1"), session_name(REPO, "L2")
    on_node = {s.node: s.name for s in h.runtime.containers.values()}
    assert on_node == {"node-1": first, "node-2": second}, "spread over both nodes"
    h.runtime.down.add("node-2")
    assert await h.scheduler.end_vanished() == []
    return h, first, second


async def test_a_down_node_keeps_its_seats_within_the_grace_and_gets_no_new_session(
    make: Make, clock: Clock
) -> None:
    h, first, second = await two_nodes_one_down(make, clock)
    assert node_up("node-1") == 1 and node_up("node-2") == 0
    clock.now += GRACE
    assert await h.scheduler.end_vanished() == []
    assert stops(h) == [] and set(h.scheduler.cluster.seats) == {first, second}

    await h.scheduler.launch(order("L3"))
    await h.scheduler.launch(order("L4"))  # node-2 would be the emptiest
    assert [node for node, _ in h.runtime.starts] == ["node-1", "node-2", "node-1", "node-1"]
    assert [e.launch_id for e in h.of(PodReady)] == ["L1", "L2", "L3", "L4"]


async def test_a_node_down_past_the_grace_has_its_sessions_ended_as_lost_once(
    make: Make, clock: Clock
) -> None:
    h, first, second = await two_nodes_one_down(make, clock)
    clock.now += GRACE + 1
    await h.scheduler.end_vanished()
    assert stops(h) == [(second, StopReason.NODE_LOST)]
    assert set(h.scheduler.cluster.seats) == {first}, "its seat is free"
    clock.now += GRACE
    await h.scheduler.end_vanished()
    assert stops(h) == [(second, StopReason.NODE_LOST)], "ended once"
    assert second in h.runtime.containers, "its container is out of reach meanwhile"


async def test_a_node_back_is_used_again_and_what_was_ended_on_it_is_stopped(
    make: Make, clock: Clock
) -> None:
    h, _, second = await two_nodes_one_down(make, clock)
    clock.now += GRACE + 1
    await h.scheduler.end_vanished()
    h.runtime.down.clear()
    await h.scheduler.end_vanished()
    assert second not in h.runtime.containers, "the lost session's container is stopped"
    assert stops(h) == [(second, StopReason.NODE_LOST)], "stopped quietly: said once already"
    assert node_up("node-2") == 1

    await h.scheduler.launch(order("L3"))
    assert h.runtime.starts[-1][0] == "node-2", "the emptiest node again"


async def test_a_launch_waits_in_the_queue_while_the_only_room_is_on_a_down_node(
    make: Make, clock: Clock
) -> None:
    h: Harness = await make(node_lost_seconds=GRACE, queue_timeout=600)
    h.scheduler.clock = clock
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L2"))  # node-1 is full (2 GiB, 1 GiB a session)
    h.runtime.down.add("node-2")
    await h.scheduler.end_vanished()
    waiting = asyncio.create_task(h.scheduler.launch(order("L3")))
    await eventually(lambda: h.of(LaunchQueued), within=10, what="a LaunchQueued")
    assert [node for node, _ in h.runtime.starts] == ["node-1", "node-1"]

    h.runtime.down.clear()
    await h.scheduler.end_vanished()
    await asyncio.wait_for(waiting, 30)
    assert h.runtime.starts[-1][0] == "node-2"
    assert [e.launch_id for e in h.of(PodReady)] == ["L1", "L2", "L3"]


async def test_a_node_that_dies_between_surveys_is_down_from_the_first_launch_it_fails(
    make: Make, clock: Clock
) -> None:
    h: Harness = await make(node_lost_seconds=GRACE)
    h.scheduler.clock = clock
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    h.runtime.images["node-2"].add(IMAGE)  # both hold it: node-2, the emptiest, is next
    h.runtime.down.add("node-2")  # no survey has run since
    await h.scheduler.launch(order("L2"))
    assert h.scheduler.cluster.down_since == {"node-2": clock.now}, "its images went unanswered"
    assert node_up("node-2") == 0
    assert [node for node, _ in h.runtime.starts] == ["node-1", "node-1"]
    assert [e.launch_id for e in h.of(PodReady)] == ["L1", "L2"] and h.of(LaunchFailed) == []

    h.runtime.down.clear()
    await h.scheduler.end_vanished()
    assert h.scheduler.cluster.down_since == {}, "the next survey it answers brings it back"


async def test_a_node_back_within_the_grace_keeps_its_sessions(make: Make, clock: Clock) -> None:
    h, first, second = await two_nodes_one_down(make, clock)
    clock.now += GRACE / 2
    h.runtime.down.clear()
    assert await h.scheduler.end_vanished() == []
    clock.now += GRACE
    assert await h.scheduler.end_vanished() == []
    assert stops(h) == [] and set(h.scheduler.cluster.seats) == {first, second}
    assert h.runtime.running() == {first, second}


async def test_the_scheduler_starts_with_a_node_down_and_adopts_its_sessions_when_back(
    make: Make, clock: Clock
) -> None:
    h: Harness = await make(node_lost_seconds=GRACE, down=("node-2",))
    h.scheduler.clock = clock
    for name, node in (("up", "node-1"), ("away", "node-2")):
        h.runtime.containers[name] = h.runtime.session(name, node)
    await h.scheduler.reconcile()
    assert set(h.scheduler.cluster.seats) == {"up"}
    assert h.scheduler.cluster.down_since == {"node-2": clock.now}

    h.runtime.down.clear()
    await h.scheduler.end_vanished()
    assert set(h.scheduler.cluster.seats) == {"up", "away"}, "taken over as at start"
    assert h.scheduler.cluster.down_since == {}
    assert stops(h) == []
    h.runtime.images["node-2"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    assert h.runtime.starts[-1][0] == "node-2", "its memory is learned: room for one more"


async def test_no_warm_session_or_prepull_goes_to_a_down_node(make: Make, clock: Clock) -> None:
    h: Harness = await make(warm_pool_share=1, prepull_launches=1, node_memory=GiB)
    h.scheduler.clock = clock
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))  # node-1, its holder, is full now
    h.runtime.down.add("node-2")
    await h.scheduler.end_vanished()
    h.scheduler.fill_pool()
    assert h.scheduler.prepull() == [], "node-2 lacks the image but does not answer"
    await h.settled()
    assert h.runtime.pulls == []
    assert [node for node, _ in h.runtime.starts] == ["node-1"], "no room for a warm session"

    h.runtime.down.clear()
    await h.scheduler.end_vanished()
    assert [(p.node, p.image) for p in h.scheduler.prepull()] == [("node-2", IMAGE)]
    await h.settled()
    assert h.runtime.pulls == [("node-2", IMAGE)], "back: it gets the pre-pull"
