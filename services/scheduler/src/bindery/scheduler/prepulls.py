"""Which images to pull onto which nodes before anyone launches them there: one round's decisions.

In: the free seats of each node that answers, the nodes busy with a pull or a start (no pre-pull
goes there now: launches go first), where each image is known to be (holders, pulls under way),
the images launched within `BINDERY_PREPULL_KEEP`, and the seats each popular image wants free
(`headroom`). Out: the pulls to start, at most one a node.

Two rules, because a launch pulls for two reasons once its repository was launched before
(bench/placement_sim.py counts them):
- keep: every node known to hold the image left or stopped answering. An image launched within
  the keep window goes onto the emptiest node with a free seat, so its next launch finds it.
- headroom: every holder is full. A popular image keeps free seats on its holders for
  `BINDERY_PREPULL_LEAD` seconds of its launches (its launches in the popularity window, as a
  rate, times the lead, rounded up); short of that, it goes onto the emptiest nodes that lack
  it until their free seats cover the shortfall.
Neither rule pulls an image no node was seen holding: a restarted scheduler has not looked yet
(its launches do, `Scheduler.refresh_holders`), and the image may well be on every node.
Pure: the scheduler gathers the view, starts the pulls and retries what failed at a later round
(a failed pull leaves the image where it was, so the next round decides it again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum


class Rule(StrEnum):
    KEEP = "keep"
    HEADROOM = "headroom"


@dataclass(frozen=True)
class Pull:
    node: str
    image: str
    rule: Rule


def headroom(
    counts: Mapping[str, int], threshold: int, window: float, lead: float
) -> dict[str, int]:
    """Free seats each popular image (at least `threshold` launches within `window` seconds)
    wants on its holders: its launches in the next `lead` seconds at its recent rate, at least
    one. Most launched first, ties by name."""
    popular = sorted(
        (image for image, n in counts.items() if n >= threshold), key=lambda i: (-counts[i], i)
    )
    return {image: math.ceil(counts[image] * lead / window) for image in popular}


def plan(
    free_seats: Mapping[str, int],
    busy: AbstractSet[str],
    holders: Mapping[str, AbstractSet[str]],
    pulling: Mapping[str, AbstractSet[str]],
    kept: Iterable[str],
    wanted: Mapping[str, int],
) -> list[Pull]:
    """This round's pulls: headroom first, in `wanted`'s order (the most launched images lose
    the most launches to a full holder), then images to keep.

    `free_seats`: every node that answers, full ones at 0 (a node absent from it is down or
    gone). `holders`: nodes known to hold each image, including nodes since gone or down.
    `pulling`: nodes pulling each image now.
    """
    emptiest = sorted(
        (node for node, free in free_seats.items() if free > 0 and node not in busy),
        key=lambda node: (-free_seats[node], node),
    )
    taken: set[str] = set()
    pulls: list[Pull] = []

    def known(image: str) -> AbstractSet[str]:
        return holders.get(image, frozenset()) | pulling.get(image, frozenset())

    def pull_onto_emptiest(image: str, rule: Rule, seats_wanted: int) -> None:
        have = known(image)
        for node in emptiest:
            if seats_wanted <= 0:
                return
            if node in taken or node in have:
                continue
            taken.add(node)
            pulls.append(Pull(node, image, rule))
            seats_wanted -= free_seats[node]

    for image, seats in wanted.items():
        where = known(image)
        if not where:
            continue  # seen on no node (not since a restart): it may be anywhere already
        free = sum(free_seats.get(node, 0) for node in where)
        pull_onto_emptiest(image, Rule.HEADROOM, seats - free)
    planned = {pull.image for pull in pulls}
    for image in kept:
        held = holders.get(image)
        if not held or image in planned or pulling.get(image):
            continue
        if not any(node in free_seats for node in held):
            pull_onto_emptiest(image, Rule.KEEP, 1)
    return pulls
