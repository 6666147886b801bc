"""Pre-pulls: the round's decisions (`prepulls.py`, pure) and the scheduler running them against
a fake runtime: an image launched lately is pulled elsewhere once its last holder goes, a popular
one onto the emptiest nodes when its holders run out of free seats; one pull a node at a time,
none onto a node that does not answer or where a launch pulls, a failed pull is tried again at a
later round, and a launch that must pull goes ahead of a pre-pull on its node."""

from __future__ import annotations

import asyncio

from bindery.events import PodReady
from bindery.runtimes import RuntimeError_
from bindery.scheduler.prepulls import Pull, Rule, headroom, plan
from tests.support.eventually import eventually
from tests.unit.scheduler.conftest import IMAGE, GiB, Harness, Make, order

OTHER = "127.0.0.1:5000/other:def"


# --- the decisions ---------------------------------------------------------------------------


def test_a_popular_image_wants_its_next_launches_free_seats_at_least_one() -> None:
    counts = {"top": 900, "some": 3, "rare": 2}
    # 900 launches an hour are 30 in two minutes; 3 an hour still want one seat free.
    assert headroom(counts, threshold=3, window=3600, lead=120) == {"top": 30, "some": 1}
    assert list(headroom({"b": 5, "a": 5, "c": 9}, 3, 3600, 120)) == ["c", "a", "b"]


def test_an_image_launched_lately_is_pulled_elsewhere_when_its_last_holder_leaves() -> None:
    free = {"n1": 3, "n2": 5, "n3": 0}
    holders = {IMAGE: {"gone"}, OTHER: {"gone", "n1"}, "never-seen:1": set()}
    pulls = plan(free, set(), holders, {}, [IMAGE, OTHER, "never-seen:1"], {})
    assert pulls == [Pull("n2", IMAGE, Rule.KEEP)], "OTHER still has n1; nobody saw the third"
    assert plan(free, set(), holders, {IMAGE: {"n1"}}, [IMAGE], {}) == [], "on its way already"
    assert plan(free, set(), holders, {}, [], {}) == [], "not launched within the keep window"


def test_a_popular_image_short_of_free_seats_goes_onto_the_emptiest_nodes() -> None:
    free = {"holder": 1, "a": 2, "b": 4, "c": 3, "full": 0}
    pulls = plan(free, set(), {IMAGE: {"holder"}}, {}, [], {IMAGE: 6})
    assert pulls == [Pull("b", IMAGE, Rule.HEADROOM), Pull("c", IMAGE, Rule.HEADROOM)], (
        "1 free + 4 + 3 covers 6"
    )
    assert plan(free, set(), {IMAGE: {"holder", "b"}}, {}, [], {IMAGE: 5}) == []
    assert plan(free, set(), {}, {}, [], {IMAGE: 6}) == [], "seen on no node: pulled nowhere"


def test_one_pull_a_node_none_where_a_launch_pulls_or_starts_none_onto_a_down_node() -> None:
    free = {"a": 4, "b": 3, "busy": 9}  # a node absent from `free` is down or gone
    wanted = {IMAGE: 2, OTHER: 2}
    pulls = plan(free, {"busy"}, {IMAGE: {"down"}, OTHER: {"down"}}, {}, [], wanted)
    assert pulls == [Pull("a", IMAGE, Rule.HEADROOM), Pull("b", OTHER, Rule.HEADROOM)]
    assert plan({"busy": 9}, {"busy"}, {}, {}, [], wanted) == []


# --- the scheduler running them --------------------------------------------------------------


async def test_the_scheduler_keeps_a_recent_image_when_its_only_holder_stops_answering(
    make: Make,
) -> None:
    h: Harness = await make()
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    assert h.scheduler.prepull() == [], "held by a node that answers, and not popular"
    h.runtime.down.add("node-1")
    await h.scheduler.end_vanished()
    async with h.loops("prepull"):  # a node found down starts a round at once
        await eventually(lambda: h.runtime.pulls, within=10, what="a pre-pull")
    await h.settled()
    assert h.runtime.pulls == [("node-2", IMAGE)]
    assert h.scheduler.cluster.holding(IMAGE) == {"node-1", "node-2"}


async def test_no_image_is_kept_past_the_keep_window(make: Make) -> None:
    h: Harness = await make(prepull_keep=60)
    h.scheduler.clock = clock = Clock()
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    clock.now += 61
    h.runtime.down.add("node-1")
    await h.scheduler.end_vanished()
    assert h.scheduler.prepull() == []


async def test_a_popular_image_whose_holders_are_full_is_pulled_onto_another_node(
    make: Make,
) -> None:
    h: Harness = await make(node_memory=2 * GiB, prepull_launches=2)
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    h.runtime.images["node-2"].add(OTHER)
    await h.scheduler.launch(order("L2", OTHER))
    assert h.scheduler.prepull() == [], "launched once: not popular"
    await h.scheduler.launch(order("L3"))
    assert h.scheduler.cluster.free("node-1") == 0, "its one holder is full now"
    assert [(p.node, p.rule) for p in h.scheduler.prepull()] == [("node-2", Rule.HEADROOM)]
    await h.settled()
    assert h.runtime.pulls == [("node-2", IMAGE)]


async def test_a_failed_prepull_is_logged_and_tried_again_at_a_later_round(make: Make) -> None:
    h: Harness = await make()
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    failures = [RuntimeError_("registry said 500")]
    pull = h.runtime.pull

    async def flaky_pull(node: str, image: str) -> None:
        if failures:
            h.runtime.pulls.append((node, image))
            raise failures.pop()
        await pull(node, image)

    h.runtime.pull = flaky_pull  # type: ignore[method-assign]
    h.runtime.down.add("node-1")
    await h.scheduler.end_vanished()
    assert len(h.scheduler.prepull()) == 1
    await h.settled()
    assert IMAGE not in h.runtime.images["node-2"]
    assert "node-2" not in h.scheduler.cluster.down_since, "a failed pull is not a down node"
    assert len(h.scheduler.prepull()) == 1, "the next round decides it again"
    await h.settled()
    assert h.runtime.pulls == [("node-2", IMAGE), ("node-2", IMAGE)]
    assert IMAGE in h.runtime.images["node-2"]


async def test_a_launch_that_must_pull_goes_ahead_of_a_prepull_on_its_node(make: Make) -> None:
    """One pull a node at a time; a launch's own pull does not wait behind a pre-pull."""
    h: Harness = await make(node_memory=4 * GiB)
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    held: dict[tuple[str, str], asyncio.Event] = {}
    pull = h.runtime.pull

    async def slow_pull(node: str, image: str) -> None:
        await held.setdefault((node, image), asyncio.Event()).wait()
        await pull(node, image)

    h.runtime.pull = slow_pull  # type: ignore[method-assign]
    h.runtime.down.add("node-1")
    await h.scheduler.end_vanished()
    assert len(h.scheduler.prepull()) == 1
    await eventually(lambda: ("node-2", IMAGE) in held, within=10, what="the pre-pull under way")
    assert h.scheduler.prepull() == [], "one pull a node at a time"

    launch = asyncio.create_task(h.scheduler.launch(order("L2", OTHER)))
    await eventually(lambda: ("node-2", OTHER) in held, within=10, what="the launch's pull")
    held[("node-2", OTHER)].set()
    await asyncio.wait_for(launch, 10)
    assert h.of(PodReady)[-1].launch_id == "L2"
    await asyncio.wait_for(h.settled(), 10)  # the pre-pull would still wait: its gate is shut
    assert IMAGE not in h.runtime.images["node-2"], "the pre-pull was cancelled for it"
    assert h.scheduler.prepull() == [Pull("node-2", IMAGE, Rule.KEEP)], "and decided again"
    held[("node-2", IMAGE)].set()
    await h.settled()
    assert IMAGE in h.runtime.images["node-2"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
