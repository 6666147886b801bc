"""Placement, quotas and the waiting queue, as pure logic (no runtime, no broker)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest

from bindery.events import QueueLimit
from bindery.runtimes import Session
from bindery.scheduler.admission import Admission, QueueTimeout, Withdrawn
from bindery.scheduler.cluster import Cluster, Seat
from bindery.scheduler.popularity import Popularity, warm_targets

GiB = 1024**3
IMAGE = "registry/repo:abc"


def cluster(**capacity_gib: int) -> Cluster:
    return Cluster({node.replace("_", "-"): gib * GiB for node, gib in capacity_gib.items()})


def warm_session(name: str, node: str, image: str = IMAGE) -> Session:
    return Session(
        name, node, "pool", image, "repo", datetime.now(UTC), "http://x", True, GiB, True
    )


def test_prefers_the_node_holding_the_image() -> None:
    view = cluster(node_1=4, node_2=8)
    view.learn_image("node-1", IMAGE)
    choice = view.choose(IMAGE, GiB)
    assert choice is not None and (choice.node, choice.holds_image) == ("node-1", True)


def test_a_full_holder_sends_the_launch_elsewhere_to_pull() -> None:
    view = cluster(node_1=2, node_2=2)
    view.learn_image("node-1", IMAGE)
    view.occupy(Seat("a", "node-1", IMAGE, GiB))
    view.occupy(Seat("b", "node-1", IMAGE, GiB))
    choice = view.choose(IMAGE, GiB)
    assert choice is not None and (choice.node, choice.holds_image) == ("node-2", False)


def test_ties_spread_over_the_holders() -> None:
    view = cluster(node_1=4, node_2=4, node_3=4)
    for node in ("node-1", "node-2"):
        view.learn_image(node, IMAGE)
    placed = []
    for n in range(4):
        choice = view.choose(IMAGE, GiB)
        assert choice is not None
        placed.append(choice.node)
        view.occupy(Seat(f"s{n}", choice.node, IMAGE, GiB))
    assert Counter(placed) == {"node-1": 2, "node-2": 2}, "node-3 lacks the image"


def test_no_node_with_room_means_no_choice() -> None:
    view = cluster(node_1=1)
    view.occupy(Seat("a", "node-1", IMAGE, GiB))
    assert view.choose(IMAGE, GiB) is None


def admission(view: Cluster, repo_quota: int = 100, total_quota: int = 100) -> Admission:
    evicted: list[Seat] = []
    return Admission(view, repo_quota, total_quota, GiB, evicted.append)


async def test_third_launch_of_a_repository_waits_first_in_line_and_goes_when_one_stops() -> None:
    gate = admission(cluster(node_1=16), repo_quota=2)
    first, second = gate.enqueue("a", "repo", IMAGE), gate.enqueue("b", "repo", IMAGE)
    assert first.admitted and second.admitted
    third = gate.enqueue("c", "repo", IMAGE)
    other = gate.enqueue("d", "other-repo", IMAGE)
    assert third.admitted is None and (third.position, third.limit) == (1, QueueLimit.REPOSITORY)
    assert other.admitted, "a repository at its quota holds up no other repository"
    reported: list[tuple[int, str]] = []

    async def notify(position: int, limit: str) -> None:
        reported.append((position, limit))

    waiting = asyncio.create_task(gate.wait(third, 5, notify))
    await asyncio.sleep(0)
    gate.release("a")
    admitted = await waiting
    assert admitted.seat.name == "c" and reported == [(1, QueueLimit.REPOSITORY)]


async def test_a_launch_carrying_its_repositorys_own_quota_is_held_at_that_number() -> None:
    gate = admission(cluster(node_1=16), repo_quota=5)
    assert gate.enqueue("a", "course", IMAGE, repo_quota=1).admitted
    held = gate.enqueue("b", "course", IMAGE, repo_quota=1)
    assert held.admitted is None and (held.position, held.limit) == (1, QueueLimit.REPOSITORY)
    assert gate.enqueue("c", "course", IMAGE, repo_quota=3).admitted, "its own quota: 3"
    assert gate.enqueue("d", "other", IMAGE).admitted, "no quota of its own: the default 5"

    async def notify(position: int, limit: str) -> None:
        pass

    with pytest.raises(QueueTimeout) as failure:
        await gate.wait(held, 0.01, notify)
    assert (failure.value.limit, failure.value.repo_quota) == (QueueLimit.REPOSITORY, 1)
    gate.release("a")
    gate.release("c")
    again = gate.enqueue("e", "course", IMAGE, repo_quota=1, launch_id="L-e")
    assert again.admitted is not None and again.admitted.seat.launch_id == "L-e"


async def test_a_launch_withdrawn_from_the_queue_stops_waiting_and_holds_no_place() -> None:
    gate = admission(cluster(node_1=16), total_quota=1)
    gate.enqueue("a", "r1", IMAGE)
    second, third = gate.enqueue("b", "r2", IMAGE), gate.enqueue("c", "r3", IMAGE)

    async def notify(position: int, limit: str) -> None:
        pass

    waiting = asyncio.create_task(gate.wait(second, 60, notify))
    await asyncio.sleep(0)
    gate.cancel("b")
    with pytest.raises(Withdrawn):
        await asyncio.wait_for(waiting, 10)
    assert gate.waiters == [third] and third.position == 1
    gate.cancel("a")  # admitted already: it keeps its seat, its caller gives it back
    assert "a" in gate.cluster.seats
    gate.release("a")
    assert third.admitted is not None


async def test_positions_move_up_and_the_wait_ends_with_the_limit_that_held_it() -> None:
    gate = admission(cluster(node_1=16), total_quota=1)
    gate.enqueue("a", "r1", IMAGE)
    second, third = gate.enqueue("b", "r2", IMAGE), gate.enqueue("c", "r3", IMAGE)
    waiting = [(w.position, w.limit) for w in (second, third)]
    assert waiting == [(1, QueueLimit.TOTAL), (2, QueueLimit.TOTAL)]
    gate.withdraw(second)
    assert (third.position, third.limit) == (1, QueueLimit.TOTAL)

    async def notify(position: int, limit: str) -> None:
        pass

    with pytest.raises(QueueTimeout) as failure:
        await gate.wait(third, 0.05, notify)
    assert failure.value.limit == QueueLimit.TOTAL and gate.waiters == []


async def test_capacity_holds_launches_in_the_queue() -> None:
    gate = admission(cluster(node_1=1, node_2=1))
    assert gate.enqueue("a", "r", IMAGE).admitted and gate.enqueue("b", "r", IMAGE).admitted
    third = gate.enqueue("c", "r", IMAGE)
    assert (third.position, third.limit) == (1, QueueLimit.TOTAL)
    gate.release("b")
    assert third.admitted is not None and third.admitted.seat.node == "node-2"


def test_a_launch_claims_a_warm_session_of_its_image() -> None:
    view = cluster(node_1=4)
    warm = warm_session("pool-1", "node-1")
    view.occupy(Seat("pool-1", "node-1", IMAGE, GiB, pool=True, warm=warm))
    gate = admission(view)
    waiter = gate.enqueue("launch-1", "repo", IMAGE)
    assert waiter.admitted is not None and waiter.admitted.warm == warm
    assert waiter.admitted.seat.name == "pool-1" and view.repo_sessions("repo") == 1
    assert view.pool_seats() == []


def test_warm_sessions_of_other_images_give_way_to_launches() -> None:
    view = cluster(node_1=1)
    view.occupy(
        Seat("pool-1", "node-1", "other:1", GiB, pool=True, warm=warm_session("pool-1", "node-1"))
    )
    evicted: list[Seat] = []
    gate = Admission(view, 100, 100, GiB, evicted.append)
    waiter = gate.enqueue("launch-1", "repo", IMAGE)
    assert waiter.admitted is not None and [seat.name for seat in evicted] == ["pool-1"]


def test_the_pool_follows_the_most_launched_images() -> None:
    popularity = Popularity(window=60)
    for _ in range(3):
        popularity.record("a", "repo-a", {}, now=100)
    popularity.record("b", "repo-b", {}, now=100)
    popularity.record("c", "repo-c", {}, now=10)
    counts = popularity.counts(now=100)
    assert counts == {"a": 3, "b": 1}, "launches older than the window are forgotten"
    assert warm_targets(counts, 3) == {"a": 2, "b": 1}
    assert warm_targets(counts, 1) == {"a": 1}
    assert warm_targets(Counter(), 3) == Counter()
    assert popularity.popular(3, now=100) == ["a"]
