"""On the real broker: a ref-resolved or image-built reaches only the queues of the step the
resolver or the builder decided on (bindery.events.NextStep, bindery.bus.topology). A launch
that needs a build goes to the builders only, one whose image exists to the scheduler only, and a
build-only launch whose image exists to neither; the archiver sees them all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import aio_pika
import pytest

from bindery.bus import Bus, topology
from bindery.events import Event
from tests.support.eventually import eventually
from tests.support.launches import image_built, ref_resolved
from tests.support.stack import SLOT, own_vhost, service_urls

VHOST = f"bindery-routing-{SLOT}"
#: Who takes what: the builders' unclaimed queue (no replica is bound in this vhost, so the
#: builds exchange hands every build to it), the scheduler's launches, the archive.
QUEUES = (topology.BUILDER, topology.SCHEDULER, topology.ARCHIVER)


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    """A virtual host of its own: its queues hold only what this module publishes."""
    with own_vhost(VHOST) as url:
        yield url


async def as_service(service: str) -> Bus:
    """A bus connected as `service`'s own broker user: it may publish only its own events."""
    bus = Bus(service_urls(VHOST)[service], service, connect_timeout=10, declare_topology=False)
    await bus.connect()
    return bus


async def queued(amqp_url: str) -> dict[str, set[str]]:
    """The launch ids each of QUEUES holds now (taken off them)."""
    found: dict[str, set[str]] = {}
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for spec in QUEUES:
            assert spec.name is not None
            queue = await channel.declare_queue(spec.name, passive=True)
            launches = found.setdefault(spec.name, set())
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                launches.add(message.correlation_id or "")
    return found


def launch(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_each_launch_reaches_only_the_queues_of_its_next_step(amqp_url: str) -> None:
    needs_build = ref_resolved(launch("build"), image_exists=False)
    exists = ref_resolved(launch("launch"), image_exists=True)
    build_only = ref_resolved(launch("done"), image_exists=True, build_only=True)
    built = image_built(launch("built"))
    built_only = image_built(launch("built-only"), build_only=True)
    resolver, builder = await as_service("resolver"), await as_service("builder")
    sent: list[Event] = []
    try:
        for resolved in (build_only, needs_build, exists):
            await resolver.publish(resolved)
            sent.append(resolved)
        for image in (built_only, built):
            await builder.publish(image)
            sent.append(image)
    finally:
        await resolver.close()
        await builder.close()
    assert [event.routing_key for event in sent] == [
        "ref-resolved.done",
        "ref-resolved.build",
        "ref-resolved.launch",
        "image-built.done",
        "image-built.launch",
    ]

    held: dict[str, set[str]] = {spec.name or "": set() for spec in QUEUES}
    everything = {event.launch_id for event in sent}

    async def archived_all() -> bool:
        for name, launches in (await queued(amqp_url)).items():
            held[name] |= launches
        return held[topology.ARCHIVER.name or ""] == everything

    # Publisher confirms: each event was routed before its publish returned.
    await eventually(
        archived_all, within=10, every=0.5, what="the archiver's queue holds every launch"
    )
    assert held[topology.BUILDER.name or ""] == {needs_build.launch_id}
    assert held[topology.SCHEDULER.name or ""] == {exists.launch_id, built.launch_id}
