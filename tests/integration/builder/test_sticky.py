"""Sticky builds on the real broker: one repository, one builder replica; fail-over when it dies.

The replicas here are bare consumers of the queues the builder consumes
(``topology.builder_replica``, ``topology.BUILDER``): routing is the broker's, not the builder's.
"""

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from bindery.bus import Bus, Handlers, topology
from bindery.events import Event, NextStep, RefResolved
from tests.support.launches import ref_resolved
from tests.support.stack import SLOT, own_vhost

VHOST = f"bindery-integration-{SLOT}-sticky"


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A virtual host of its own: no replica queue left by other tests takes a share."""
    with own_vhost(VHOST) as url:
        yield url


# The `bus` fixture (tests/integration/conftest.py) connects to this module's `amqp_url`.


def resolved(repo_key: str) -> RefResolved:
    return ref_resolved(
        uuid.uuid4().hex,
        image=f"reg/bindery/{repo_key}:1",
        spec=f"{repo_key}/HEAD",
        repo_url=f"https://example.org/{repo_key}.git",
        repo_key=repo_key,
    )


Delivery = tuple[str, str, str]  # replica, queue, launch id


class Replica:
    """Consumes a replica queue and the unclaimed queue, holding each delivery (like a build)."""

    def __init__(self, name: str, got: "asyncio.Queue[Delivery]") -> None:
        self.name = name
        self.got = got

    async def start(self, amqp_url: str) -> None:
        self.bus = Bus(amqp_url, f"replica-{self.name}", connect_timeout=10)
        await self.bus.connect()
        for spec in (topology.builder_replica(self.name), topology.BUILDER):

            async def handle(event: Event, queue: str = str(spec.name)) -> None:
                await self.got.put((self.name, queue, event.launch_id))
                await asyncio.Event().wait()  # a build that never ends, until the replica dies

            await self.bus.consume(
                spec, Handlers().on(RefResolved, handle, route=NextStep.BUILD), prefetch=50
            )

    async def die(self) -> None:
        await self.bus.close()


async def take(got: "asyncio.Queue[Delivery]", count: int, within: float = 60) -> list[Delivery]:
    return [await asyncio.wait_for(got.get(), within) for _ in range(count)]


async def test_each_repository_goes_to_one_replica_and_fails_over_when_it_dies(
    amqp_url: str, bus: Bus
) -> None:
    names = ["a", "b"]
    got: asyncio.Queue[Delivery] = asyncio.Queue()
    replicas = [Replica(name, got) for name in names]
    for replica in replicas:
        await replica.start(amqp_url)

    # Three launches of each of 12 repositories: all launches of a repository meet in one
    # replica queue, and both replicas get some repositories.
    repos = [f"repo-{i}" for i in range(12)]
    launches: dict[str, str] = {}
    for repo in repos * 3:
        event = resolved(repo)
        launches[event.launch_id] = repo
        await bus.publish(event)
    delivered = await take(got, len(launches))
    owners: dict[str, set[str]] = {}
    for owner, _, launch_id in delivered:
        owners.setdefault(launches[launch_id], set()).add(owner)
    assert all(len(names) == 1 for names in owners.values()), owners
    assert {owner for owner, _, _ in delivered} == set(names), "both own repositories"
    assert {(owner, queue) for owner, queue, _ in delivered} == {
        (name, topology.builder_replica(name).name) for name in names
    }, "nothing spilled while both replicas lived"

    # The first replica dies holding its launches: they reach the survivor through the
    # unclaimed queue, and so does a new launch of one of its repositories.
    dead = replicas[0]
    held = {launch_id for owner, _, launch_id in delivered if owner == dead.name}
    await dead.die()
    orphan = resolved(launches[next(iter(held))])
    await bus.publish(orphan)
    taken = await take(got, len(held) + 1)
    assert {launch_id for _, _, launch_id in taken} == held | {orphan.launch_id}
    assert {(owner, queue) for owner, queue, _ in taken} == {
        (replicas[1].name, topology.BUILDER.name)
    }
    await replicas[1].die()


async def test_a_launch_with_no_replica_alive_waits_in_the_unclaimed_queue(
    amqp_url: str, bus: Bus
) -> None:
    event = resolved("lonely")
    await bus.publish(event)
    got: asyncio.Queue[Delivery] = asyncio.Queue()
    replica = Replica("late", got)
    await replica.start(amqp_url)
    assert await take(got, 1) == [(replica.name, topology.BUILDER.name, event.launch_id)]
    await replica.die()
