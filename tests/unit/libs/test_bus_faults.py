"""The bus through a broken connection, with fakes in place of aio-pika's channel and messages:
publishes wait for the connection and go out once it is back (within the retry bound), a
delivery lost with its channel is not settled, and its redelivery never runs the handler a
second time (issue 14)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from pamqp.commands import Basic

from bindery.bus import Bus, Handlers, topology
from bindery.events import Event, LaunchRequested

LOST = aio_pika.exceptions.ChannelInvalidStateError("channel closed")


class FakeChannel:
    """A robust channel: `ready()` returns once the connection is back (`back` is set)."""

    def __init__(self) -> None:
        self.back = asyncio.Event()
        self.back.set()

    async def ready(self) -> None:
        await self.back.wait()


class FakeExchange:
    """Fails its first `failures` publishes as a closed channel does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[str] = []

    # aio-pika's Exchange.publish signature, timeout included.
    async def publish(
        self,
        message: aio_pika.Message,
        routing_key: str,
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise LOST
        self.published.append(routing_key)


def wired_bus(exchange: FakeExchange, channel: FakeChannel, retry_for: float) -> Bus:
    bus = Bus("amqp://127.0.0.1/", "test", publish_retry_for=retry_for)
    bus._connection = object()  # type: ignore[assignment]
    bus._publish_channel = bus._log_channel = channel  # type: ignore[assignment]
    bus._streams_back.set()  # as connect() leaves it
    bus._exchanges = {
        name: exchange  # type: ignore[misc]
        for name in (
            topology.EVENTS_EXCHANGE,
            topology.LOGS_EXCHANGE,
            topology.DEAD_LETTER_EXCHANGE,
        )
    }
    return bus


def requested() -> LaunchRequested:
    return LaunchRequested(launch_id="a1", provider="git", spec="x/main")


async def test_a_publish_through_a_lost_connection_goes_out_once_it_is_back() -> None:
    channel = FakeChannel()
    channel.back.clear()
    exchange = FakeExchange(failures=2)
    bus = wired_bus(exchange, channel, retry_for=30)
    publishing = asyncio.create_task(bus.publish(requested()))
    await asyncio.sleep(0.5)
    assert not publishing.done(), "it waits for the connection"
    channel.back.set()
    await asyncio.wait_for(publishing, 10)
    assert exchange.published == ["launch-requested"]


class StreamsComingBack:
    """A reconnected connection whose broker has its streams back after `missing` asks: until
    then a passive declare of one fails as for a queue that does not exist."""

    def __init__(self, missing: int) -> None:
        self.missing = missing
        self.asked: list[str] = []

    def channel(self, publisher_confirms: bool) -> StreamsComingBack:
        return self

    async def __aenter__(self) -> StreamsComingBack:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def declare_queue(self, name: str, passive: bool) -> None:
        self.asked.append(name)
        if self.missing:
            self.missing -= 1
            raise aio_pika.exceptions.ChannelNotFoundEntity(f"no queue {name}")


async def test_after_a_reconnect_publishes_wait_until_the_broker_has_its_streams() -> None:
    exchange = FakeExchange(failures=0)
    bus = wired_bus(exchange, FakeChannel(), retry_for=30)
    broker = StreamsComingBack(missing=3)
    bus._connection = broker  # type: ignore[assignment]
    bus._lost()  # the broker restarted...
    publishing = asyncio.create_task(bus.publish(requested()))
    await asyncio.sleep(0.1)
    assert not publishing.done() and not exchange.published, "nothing goes out meanwhile"
    bus._reconnected()  # ... and takes connections again, its streams still missing
    await asyncio.wait_for(publishing, 10)
    assert exchange.published == ["launch-requested"]
    assert broker.missing == 0, "it went out only once both streams answered"
    assert broker.asked[-2:] == list(topology.STREAMS)


async def test_a_publish_gives_up_after_the_retry_bound() -> None:
    channel = FakeChannel()
    channel.back.clear()
    bus = wired_bus(FakeExchange(failures=1), channel, retry_for=0.5)
    with pytest.raises(aio_pika.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(bus.publish(requested()), 10)


async def test_a_refused_publish_is_not_retried() -> None:
    class Refusing(FakeExchange):
        async def publish(
            self,
            message: aio_pika.Message,
            routing_key: str,
            timeout: float,  # noqa: ASYNC109
        ) -> None:
            self.failures += 1
            # The broker's nack, with its frame as aiormq raises it: a tracer records its text.
            raise aio_pika.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=1))

    exchange = Refusing(failures=0)
    bus = wired_bus(exchange, FakeChannel(), retry_for=30)
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await bus.publish(requested())
    assert exchange.failures == 1


@dataclass
class FakeDelivery:
    """An incoming message; `lost` makes its settlement fail as on a channel the broker closed."""

    body: bytes
    redelivered: bool = False
    lost: bool = False
    settled: list[str] = field(default_factory=list)
    headers: dict[str, Any] = field(default_factory=dict)

    async def _settle(self, how: str) -> None:
        if self.lost:
            raise LOST
        self.settled.append(how)

    async def ack(self) -> None:
        await self._settle("ack")

    async def nack(self, requeue: bool = True) -> None:
        await self._settle("nack")

    async def reject(self, requeue: bool = False) -> None:
        await self._settle("reject")


async def test_a_redelivery_waits_for_the_running_handler_and_is_acked_without_a_second_run() -> (
    None
):
    bus = Bus("amqp://127.0.0.1/", "test")
    event = requested()
    finish = asyncio.Event()
    runs: list[str] = []

    async def handler(got: Event) -> None:
        runs.append(got.event_id)
        await finish.wait()

    table = Handlers().on(LaunchRequested, handler)

    first = FakeDelivery(event.to_json(), lost=True)
    again = FakeDelivery(event.to_json(), redelivered=True)
    running = asyncio.create_task(bus._handle(first, table, topology.RESOLVER))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    redelivered = asyncio.create_task(bus._handle(again, table, topology.RESOLVER))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert not redelivered.done(), "the redelivery waits for the handler already running"
    finish.set()
    assert await running == "ok", "a lost delivery's ack failing does not fail the handler"
    assert await redelivered == "duplicate"
    assert runs == [event.event_id]
    assert first.settled == [] and again.settled == ["ack"]
    # Later redeliveries (a publisher's retry) are recognised too.
    late = FakeDelivery(event.to_json(), redelivered=True)
    assert await bus._handle(late, table, topology.RESOLVER) == "duplicate"  # type: ignore[arg-type]
    assert runs == [event.event_id]


async def test_a_redelivery_of_a_failed_handler_runs_it_again() -> None:
    bus = Bus("amqp://127.0.0.1/", "test")
    event = requested()
    runs: list[str] = []

    async def handler(got: Event) -> None:
        runs.append(got.event_id)
        if len(runs) == 1:
            raise ValueError("first try fails")

    table = Handlers().on(LaunchRequested, handler)

    first = FakeDelivery(event.to_json())
    assert await bus._handle(first, table, topology.RESOLVER) == "error"  # type: ignore[arg-type]
    assert first.settled == ["nack"]
    again = FakeDelivery(event.to_json(), redelivered=True)
    assert await bus._handle(again, table, topology.RESOLVER) == "ok"  # type: ignore[arg-type]
    assert again.settled == ["ack"] and len(runs) == 2
