"""The warm pool sizes itself: its memory budget (a share of the cluster's session memory, each
warm session counted at the reservation its seat holds), its sessions dealt by recent demand (the
launches of the window, not the sessions found running), and that demand read back from the event
log when the scheduler starts. Its sessions start in the background: a claimed one is refilled at
once, without waiting for the maintain loop or for the pool's other starts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta

import pytest

from bindery.bus import eventlog
from bindery.events import Event, ImageBuilt, PodReady, PodStopped, RefResolved
from bindery.runtimes import Session, SessionSpec
from bindery.scheduler import handlers
from bindery.scheduler.popularity import warm_pool_sessions, warm_targets
from tests.support.eventually import eventually
from tests.support.launches import image_built, ref_resolved
from tests.unit.scheduler.conftest import IMAGE, REPO, GiB, Harness, Make, order


def test_the_budget_is_a_share_of_capacity_in_warm_sessions() -> None:
    assert warm_pool_sessions(48 * GiB, 0.1, GiB) == 4, "4.8 GiB holds four 1 GiB sessions"
    assert warm_pool_sessions(48 * GiB, 0.1, GiB // 4) == 19
    assert warm_pool_sessions(100 * 64 * GiB, 0.2, GiB) == 1280
    assert warm_pool_sessions(48 * GiB, 0.0, GiB) == 0
    assert warm_pool_sessions(3 * GiB, 0.1, GiB) == 0, "a third of a session is none"


async def test_the_budget_counts_what_a_warm_session_holds_its_seat_is_a_full_one(
    make: Make,
) -> None:
    # Two nodes of 8 GiB: a sixteenth is 1 GiB, four warm sessions of 256 MiB; each still
    # takes a whole seat in placement, which a launch may evict it from.
    h: Harness = await make(
        node_memory=8 * GiB, warm_pool_share=1 / 16, warm_session_memory=GiB // 4
    )
    assert h.scheduler.warm_pool_sessions() == 4
    for launch_id in ["L1", "L2", "L3", "L4", "L5"]:
        await h.scheduler.launch(order(launch_id, image=f"127.0.0.1:5000/i{launch_id}:1"))
    h.scheduler.fill_pool()
    await h.settled()
    warm = h.scheduler.cluster.pool_seats()
    assert len(warm) == 4
    assert {seat.reservation for seat in warm} == {h.scheduler.settings.memory_reservation}


def test_sessions_go_to_the_most_launched_images_none_beyond_its_demand() -> None:
    counts = Counter({"a": 5, "b": 2, "c": 1})
    assert warm_targets(counts, 2) == {"a": 1, "b": 1}, "the top images first, one each"
    assert warm_targets(counts, 5) == {"a": 2, "b": 2, "c": 1}
    assert warm_targets(counts, 100) == counts, "demand, not the budget, sizes a quiet pool"
    assert warm_targets(Counter({"b": 3, "a": 3}), 1) == {"a": 1}, "ties by name: no flapping"
    assert warm_targets(counts, 0) == Counter()


async def test_the_pool_follows_demand_within_the_budget(make: Make) -> None:
    # Two nodes of 8 GiB; an eighth of 16 GiB holds two 1 GiB seats.
    h: Harness = await make(node_memory=8 * GiB, warm_pool_share=0.125)
    other = "127.0.0.1:5000/other:def"
    for launch_id, image in [("L1", IMAGE), ("L2", IMAGE), ("L3", IMAGE), ("L4", other)]:
        await h.scheduler.launch(order(launch_id, image))
    h.scheduler.fill_pool()
    await h.settled()
    warm = await h.runtime.list_warm()
    assert sorted(s.image for s in warm) == sorted([IMAGE, other])
    await h.scheduler.launch(order("L5", IMAGE))
    assert h.of(PodReady)[-1].session in {s.name for s in warm}, "served warm"


async def test_a_claimed_session_is_refilled_at_once_and_no_start_waits_for_another(
    make: Make,
) -> None:
    h: Harness = await make(node_memory=8 * GiB, warm_pool_share=0.125)  # two seats
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L2"))
    held, warm_starts = asyncio.Event(), []
    start = h.runtime.start

    async def held_start(node: str, spec: SessionSpec) -> Session:
        warm_starts.append(spec.name)
        if warm_starts[0] == spec.name:  # the first warm start hangs until released
            await held.wait()
        return await start(node, spec)

    h.runtime.start = held_start  # type: ignore[method-assign]
    h.scheduler.fill_pool()  # returns with a start still hanging
    claimable = await eventually(
        lambda: [seat for seat in h.scheduler.cluster.pool_seats() if seat.warm],
        within=10,
        what="the other warm session ready",
    )
    [ready] = [seat.warm for seat in claimable if seat.warm]
    await h.scheduler.launch(order("L3"))  # claims it; no maintain pass after
    assert h.of(PodReady)[-1].session == ready.name
    held.set()
    await h.settled()
    warm = await h.runtime.list_warm()
    assert len(warm) == 2 and ready.name not in {s.name for s in warm}, "refilled at once"


async def test_sessions_found_running_are_not_demand(make: Make) -> None:
    """A restarted scheduler adopts what runs (seats, routes) but warms only what was launched
    within the window: sessions left running from long ago are not launches now."""
    h: Harness = await make(warm_pool_share=1)
    old = "127.0.0.1:5000/old:1"
    for index in range(3):
        h.runtime.containers[f"s{index}"] = h.runtime.session(f"s{index}", "node-1", old)
    h.runtime.containers["warm-w"] = h.runtime.session("w", "node-2", old, warm=True)
    await h.scheduler.reconcile()
    assert set(h.scheduler.cluster.seats) == {"s0", "s1", "s2", "w"}, "all adopted"
    assert h.scheduler.popularity.counts() == Counter()
    await h.settled()
    h.scheduler.fill_pool()
    await h.settled()
    assert await h.runtime.list_warm() == [], "no launch of its image: the pool lets it go"
    assert h.runtime.starts == []


async def test_no_share_no_pool(make: Make) -> None:
    h: Harness = await make(warm_pool_share=0)
    await h.scheduler.launch(order("L1"))
    h.scheduler.fill_pool()
    assert await h.runtime.list_warm() == []
    assert len(h.runtime.starts) == 1


def resolved(
    launch_id: str, image: str, at: datetime, *, image_exists: bool = True, build_only: bool = False
) -> RefResolved:
    event = ref_resolved(
        launch_id, image=image, image_exists=image_exists, repo_url=REPO, build_only=build_only
    )
    return event.model_copy(update={"time": at})


async def test_a_restarted_scheduler_reads_recent_demand_back(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    built = image_built(
        "L3", image="built:1", repo_url=REPO, session_env={"BINDER_REQUEST": "v2/gh/o/r/main"}
    ).model_copy(update={"time": now - timedelta(minutes=1)})
    log: list[Event] = [
        resolved("L1", IMAGE, now - timedelta(minutes=30)),
        resolved("L2", IMAGE, now - timedelta(minutes=20)),
        resolved("B1", "missing:1", now, image_exists=False),  # its image-built says it
        resolved("B2", "only-built:1", now, build_only=True),  # nobody's session
        built,
    ]
    asked: list[tuple[timedelta, Collection[str]]] = []

    async def recent(url: str, window: timedelta, types: Collection[str]) -> AsyncIterator[Event]:
        asked.append((window, types))
        for event in log:
            if event.type in types:
                yield event

    monkeypatch.setattr(eventlog, "recent", recent)
    h: Harness = await make(warm_pool_share=1)
    replayed = await handlers.replay_recent("amqp://", h.scheduler, timedelta(hours=1))
    assert replayed == 3
    assert asked == [(timedelta(hours=1), {RefResolved.type, ImageBuilt.type, PodStopped.type})]
    popularity = h.scheduler.popularity
    assert popularity.counts() == {IMAGE: 2, "built:1": 1}
    assert popularity.envs["built:1"] == built.context.session_env, (
        "warm sessions get its variables"
    )
    # Each launch counts at its own age: the one 30 minutes ago leaves a 25-minute window first.
    later = time.monotonic() + 2 * 60
    popularity.window = 25 * 60
    assert popularity.counts(now=later) == {IMAGE: 1, "built:1": 1}

    h.scheduler.fill_pool()
    await h.settled()
    assert len(h.scheduler.cluster.pool_seats()) == 2, "the pool warmed"
    assert {seat.image for seat in h.scheduler.cluster.pool_seats()} == {IMAGE, "built:1"}


async def test_replay_keeps_the_newest_launches_when_over_its_limit(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    log = [resolved(f"L{i}", f"image:{i}", now - timedelta(minutes=10 - i)) for i in range(10)]

    async def recent(url: str, window: timedelta, types: Collection[str]) -> AsyncIterator[Event]:
        for event in log:
            yield event

    monkeypatch.setattr(eventlog, "recent", recent)
    h: Harness = await make()
    assert await handlers.replay_recent("amqp://", h.scheduler, timedelta(hours=1), 3) == 3
    assert set(h.scheduler.popularity.counts()) == {"image:7", "image:8", "image:9"}
