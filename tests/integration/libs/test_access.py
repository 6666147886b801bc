"""Least privilege on the real broker: each service's own user may do what the service does
(publish its events, consume its queues, read its streams) and the broker refuses the rest."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused

from bindery.bus import Bus, Handlers, QueueSpec, topology
from bindery.bus.access import SERVICES
from bindery.events import (
    BuildLog,
    Event,
    FailureReason,
    IdleDetected,
    ImageBuilt,
    LaunchFailed,
    LaunchRequested,
    NextStep,
    RefResolved,
    SessionActivity,
    StopReason,
    event_types,
)
from tests.support.launches import pod_ready, ref_resolved
from tests.support.stack import SLOT, own_vhost, service_urls

VHOST = f"bindery-integration-{SLOT}-access"
REPLICA = f"access-{SLOT}"

Connect = Callable[[str], Awaitable[Bus]]


@pytest.fixture(scope="module")
def admin_url() -> Iterator[str]:
    """A virtual host of its own: the tests consume the shared queues there."""
    with own_vhost(VHOST) as url:
        yield url


@pytest.fixture(scope="module")
def urls(admin_url: str) -> dict[str, str]:
    return service_urls(VHOST)


@pytest.fixture
async def admin(admin_url: str) -> AsyncIterator[Bus]:
    bus = Bus(admin_url, "access-test", connect_timeout=10)
    await bus.connect()
    yield bus
    await bus.close()


@pytest.fixture
async def connect(urls: dict[str, str]) -> AsyncIterator[Connect]:
    """`await connect(service)`: a bus connected as that service's user, the way services are."""
    buses: list[Bus] = []

    async def connect(service: str) -> Bus:
        bus = Bus(urls[service], service, connect_timeout=10, declare_topology=False)
        await bus.connect()
        buses.append(bus)
        return bus

    yield connect
    for bus in buses:
        await bus.close()


def refused(what: str) -> pytest.RaisesExc[ChannelAccessRefused]:
    """The broker closes the channel: ACCESS_REFUSED, naming what was refused."""
    return pytest.raises(
        ChannelAccessRefused, match=re.escape(f"ACCESS_REFUSED - access to {what}")
    )


def resolved(launch_id: str) -> RefResolved:
    return ref_resolved(launch_id, image="reg/bindery/repo:1")


async def collect(bus: Bus, spec: QueueSpec) -> asyncio.Queue[Event]:
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def handler(event: Event) -> None:
        await received.put(event)

    # Whatever the queue carries, into `received`.
    handlers = Handlers()
    if spec.carries == topology.EVERY_EVENT:
        handlers.on(Event, handler)
    for key in set(spec.carries) - set(topology.EVERY_EVENT):
        event_type, step = topology.carried(key)
        handlers.on(event_types()[event_type], handler, route=step)
    await bus.consume(spec, handlers)
    return received


async def wait_for(received: asyncio.Queue[Event], launch_id: str) -> Event:
    """The event of `launch_id` (earlier tests may have left others in a shared queue)."""

    async def until() -> Event:
        while (event := await received.get()).launch_id != launch_id:
            pass
        return event

    return await asyncio.wait_for(until(), 10)


async def test_each_service_publishes_its_own_events(admin: Bus, connect: Connect) -> None:
    events = await collect(admin, QueueSpec("bindery.test.access-events", ("#",)))
    logs = await collect(admin, QueueSpec(None, ("#",), exchange=topology.LOGS_EXCHANGE))
    launch_id = uuid.uuid4().hex
    sent: list[Event] = [
        LaunchRequested(launch_id=launch_id, provider="git", spec="repo/HEAD"),
        resolved(launch_id),
        IdleDetected(launch_id=launch_id, session="s-1", reason=StopReason.IDLE),
        pod_ready(launch_id, session="s", node="node-1", image="i", target="http://x"),
    ]
    publishers = ("gateway", "resolver", "culler", "scheduler")
    for service, event in zip(publishers, sent, strict=True):
        await (await connect(service)).publish(event)
    for event in sent:
        assert (await wait_for(events, launch_id)).type == event.type
    builder = await connect("builder")
    await builder.publish(BuildLog(launch_id=launch_id, image="i", message="step 1"))
    assert isinstance(await wait_for(logs, launch_id), BuildLog)


async def test_each_service_consumes_its_own_queues(admin: Bus, connect: Connect) -> None:
    launch_id = uuid.uuid4().hex
    received: dict[str, asyncio.Queue[Event]] = {}
    for service, access in SERVICES.items():
        bus = await connect(service)
        for spec in access.consumes:
            if spec.name and spec.name.startswith(topology.BUILDER_REPLICA_PREFIX):
                spec = topology.builder_replica(REPLICA)
            received[f"{service} {spec.name or spec.exchange}"] = await collect(bus, spec)
    await admin.publish(LaunchRequested(launch_id=launch_id, provider="git", spec="repo/HEAD"))
    await admin.publish(resolved(launch_id))  # needs a build
    await admin.publish(ref_resolved(launch_id, image_exists=True))  # needs a session
    await wait_for(received["resolver bindery.resolver"], launch_id)
    await wait_for(received["scheduler bindery.scheduler"], launch_id)
    await wait_for(received["archiver bindery.archiver"], launch_id)
    # The builder replica's own queue, which it declared and bound itself.
    await wait_for(received[f"builder {topology.builder_replica(REPLICA).name}"], launch_id)
    await wait_for(received[f"gateway {topology.EVENTS_EXCHANGE}"], launch_id)


async def test_the_gateway_may_not_publish_what_the_scheduler_publishes(connect: Connect) -> None:
    gateway = await connect("gateway")
    ready = pod_ready(uuid.uuid4().hex, session="s", node="node-1", image="i", target="http://x")
    with refused("topic 'pod-ready' in exchange 'bindery.events'"):
        await gateway.publish(ready)


async def test_publishing_is_limited_by_exchange_and_routing_key(
    admin: Bus, connect: Connect
) -> None:
    """The resolver may not write into the build log, the culler may not fail a launch; a
    refusal costs the service nothing but that message."""
    events = await collect(admin, QueueSpec("bindery.test.access-after", ("ref-resolved.*",)))
    resolver = await connect("resolver")
    with refused("exchange 'bindery.logs'"):
        await resolver.publish(BuildLog(launch_id="l", image="i", message="forged"))
    culler = await connect("culler")
    forged = LaunchFailed(
        launch_id="l", service="scheduler", reason=FailureReason.INTERNAL, message="forged"
    )
    with refused("topic 'launch-failed'"):
        await culler.publish(forged)
    launch_id = uuid.uuid4().hex
    await resolver.publish(resolved(launch_id))
    await wait_for(events, launch_id)


async def test_the_builder_may_not_read_the_schedulers_queue(connect: Connect) -> None:
    builder = await connect("builder")

    async def handler(_event: Event) -> None:
        raise AssertionError("the builder took a scheduler message")

    with refused("queue 'bindery.scheduler'"):
        await builder.consume(
            topology.SCHEDULER,
            Handlers()
            .on(RefResolved, handler, route=NextStep.LAUNCH)
            .on(ImageBuilt, handler, route=NextStep.LAUNCH),
        )


async def test_services_may_not_declare_the_shared_topology(urls: dict[str, str]) -> None:
    bus = Bus(urls["resolver"], "resolver", connect_timeout=10, declare_topology=True)
    try:
        with refused("exchange 'bindery.events'"):
            await bus.connect()
    finally:
        await bus.close()


async def ack(message: AbstractIncomingMessage) -> None:
    await message.ack()


async def read_stream(url: str, stream: str) -> None:
    """Start reading `stream` from its first entry (raises if refused)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue(stream, passive=True)
        tag = await queue.consume(ack, arguments={"x-stream-offset": "first"})
        await queue.cancel(tag)


async def test_streams_are_read_only_by_their_readers(urls: dict[str, str]) -> None:
    await read_stream(urls["archiver"], topology.EVENT_LOG_STREAM)
    await read_stream(urls["gateway"], topology.BUILD_LOG_STREAM)
    # The gateway reads the event log too: after a broker restart it recovers what it missed.
    await read_stream(urls["gateway"], topology.EVENT_LOG_STREAM)
    with refused("queue 'bindery.event-log'"):
        await read_stream(urls["resolver"], topology.EVENT_LOG_STREAM)
    with refused("queue 'bindery.build-log'"):
        await read_stream(urls["resolver"], topology.BUILD_LOG_STREAM)


async def test_the_gateway_reports_activity(connect: Connect, admin: Bus) -> None:
    """session-activity, its second event, on the queue of the culler, which consumes it."""
    culler_bus = await connect("culler")
    received = await collect(culler_bus, topology.CULLER)
    launch_id = uuid.uuid4().hex
    activity = SessionActivity(launch_id=launch_id, session="s", last_activity=datetime.now(UTC))
    await (await connect("gateway")).publish(activity)
    assert isinstance(await wait_for(received, launch_id), SessionActivity)
