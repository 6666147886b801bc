"""The bus against the real broker: delivery, dead-lettering, retries, the event log stream."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from bindery.bus import Bus, Handlers, QueueSpec, Retry, topology
from bindery.events import Event, LaunchRequested
from tests.support.eventually import eventually


async def dead_letters(amqp_url: str) -> list[bytes]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.DEAD_LETTER_QUEUE, durable=True)
        bodies = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            bodies.append(message.body)
        return bodies


async def raw_publish(amqp_url: str, routing_key: str, body: bytes) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
        await exchange.publish(aio_pika.Message(body), routing_key=routing_key)


async def test_event_reaches_the_bound_queue_and_is_acked(bus: Bus) -> None:
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def handler(event: Event) -> None:
        await received.put(event)

    spec = QueueSpec("bindery.test.deliver", ("launch-requested",))
    await bus.consume(spec, Handlers().on(LaunchRequested, handler))
    sent = LaunchRequested(launch_id="l-deliver", provider="git", spec="x/main")
    await bus.publish(sent)
    got = await asyncio.wait_for(received.get(), 10)
    assert got.model_dump() == sent.model_dump()


async def test_malformed_message_goes_to_dead_letter_and_consumer_survives(
    bus: Bus, amqp_url: str
) -> None:
    await dead_letters(amqp_url)  # start from an empty dead-letter queue
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def handler(event: Event) -> None:
        await received.put(event)

    spec = QueueSpec("bindery.test.dlq", ("launch-requested",))
    await bus.consume(spec, Handlers().on(LaunchRequested, handler))
    await raw_publish(amqp_url, "launch-requested", b"{not json")
    good = LaunchRequested(launch_id="l-after-bad", provider="git", spec="x/main")
    await bus.publish(good)
    assert await asyncio.wait_for(received.get(), 10) == good
    letters = await eventually(
        lambda: dead_letters(amqp_url), within=30, every=0.1, what="a dead letter"
    )
    assert letters == [b"{not json"]


async def test_retry_redelivers_until_the_handler_succeeds(bus: Bus) -> None:
    attempts: list[str] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        attempts.append(event.event_id)
        if len(attempts) < 3:
            raise Retry("dependency down", delay=0.05)
        done.set()

    spec = QueueSpec("bindery.test.retry", ("launch-requested",))
    await bus.consume(spec, Handlers().on(LaunchRequested, handler))
    sent = LaunchRequested(launch_id="l-retry", provider="git", spec="x/main")
    await bus.publish(sent)
    await asyncio.wait_for(done.wait(), 10)
    assert attempts == [sent.event_id] * 3


async def test_handler_crash_is_retried_once_then_dead_lettered(bus: Bus, amqp_url: str) -> None:
    await dead_letters(amqp_url)
    attempts = 0

    async def handler(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("bug")

    spec = QueueSpec("bindery.test.crash", ("launch-requested",))
    await bus.consume(spec, Handlers().on(LaunchRequested, handler))
    sent = LaunchRequested(launch_id="l-crash", provider="git", spec="x/main")
    await bus.publish(sent)
    letters = await eventually(
        lambda: dead_letters(amqp_url), within=30, every=0.1, what="a dead letter"
    )
    assert attempts == 2
    assert letters == [sent.to_json()]


async def test_every_domain_event_is_appended_to_the_event_log(bus: Bus, amqp_url: str) -> None:
    sent = LaunchRequested(launch_id="l-log", provider="git", spec="x/main")
    await bus.publish(sent)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        stream = await channel.get_queue(topology.EVENT_LOG_STREAM)
        found = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.body == sent.to_json():
                found.set()
            await message.ack()

        await stream.consume(on_message, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(found.wait(), 10)


async def test_consumer_counts_are_the_brokers(amqp_url: str) -> None:
    """What the gateway's /health reads: live consumers per queue, 0 once they left; asking
    about a missing queue raises and leaves the bus working."""
    watcher = Bus(amqp_url, "integration-counts", connect_timeout=10)
    await watcher.connect()
    try:
        spec = QueueSpec("bindery.test.counted", ("launch-requested",))

        async def handler(event: Event) -> None:
            pass

        other = Bus(amqp_url, "integration-counted", connect_timeout=10)
        await other.connect()
        await other.consume(spec, Handlers().on(LaunchRequested, handler))
        assert await watcher.consumer_counts([spec.name or ""]) == {spec.name: 1}
        await other.close()
        assert await watcher.consumer_counts([spec.name or ""]) == {spec.name: 0}
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await watcher.consumer_counts(["bindery.test.no-such-queue"])
        assert await watcher.consumer_counts([spec.name or ""]) == {spec.name: 0}
    finally:
        await watcher.close()
