"""Reading the event log (and the other streams of events) back, and replaying a slice of it
into another virtual host.

In: an AMQP URL whose virtual host holds the `bindery.event-log` stream, where to start (the
first event kept, only new ones, or a time) and filters. Out: `Recorded` events in the order the
broker appended them, each with its stream offset, producing service and headers (the trace
context); `recent` the events of a window up to now, for a service rebuilding its view;
`replay` publishes them unchanged (same ids, producer, headers) through another virtual host's
events exchange, so services running there see exactly what the originals saw.

`read` opens a connection per call (a command, a service starting). `StreamReader` holds one
connection and channel for many reads at once, of any stream (the gateway's reads of the
build-log stream), opening them again after the broker closed them.

A stream never says "that was the last one": reading stops once the broker has sent nothing for
`idle` seconds (it sends a backlog as fast as the consumer takes it), unless `follow` is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Collection
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from bindery.bus import topology
from bindery.bus.client import Bus
from bindery.events import Event, InvalidEvent, parse_event

log = structlog.get_logger("bindery.eventlog")

Start = Literal["first", "next"] | datetime

# Stream consumers must set a prefetch; a few hundred keeps a backlog flowing without holding
# much memory.
PREFETCH = 500
# Headers the broker adds on delivery, not part of what the producer sent.
_BROKER_HEADERS = frozenset({"x-stream-offset"})


class NoEventLog(Exception):
    """The virtual host has no event log: no Bindery service has connected to it yet."""


class StreamUnavailable(Exception):
    """A `StreamReader` could not read: the broker is unreachable, closed the connection or
    channel, or the stream does not exist. The next read tries again."""


@dataclass(frozen=True)
class Recorded:
    offset: int
    event: Event
    producer: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]

    def message(self) -> aio_pika.Message:
        """The message as its producer published it."""
        return aio_pika.Message(
            self.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=self.event.event_id,
            correlation_id=self.event.launch_id,
            type=self.event.type,
            app_id=self.producer,
            headers=dict(self.headers),
        )


def _recorded(message: AbstractIncomingMessage) -> Recorded | None:
    try:
        event = parse_event(message.body)
    except InvalidEvent as exc:
        # A foreign publisher's, or one of an older version of its type (kept from before an
        # upgrade): Bus.publish takes validated events of the current versions only.
        log.warning("eventlog.invalid_event", reason=str(exc))
        return None
    headers = dict(message.headers or {})
    offset = headers.get("x-stream-offset", -1)
    return Recorded(
        offset=offset if isinstance(offset, int) else -1,
        event=event,
        producer=message.app_id or "",
        routing_key=message.routing_key or event.routing_key,
        body=message.body,
        headers={k: v for k, v in headers.items() if k not in _BROKER_HEADERS},
    )


async def read(
    url: str,
    *,
    start: Start = "first",
    until: datetime | None = None,
    launch_id: str | None = None,
    event_type: str | None = None,
    follow: bool = False,
    idle: float = 1.0,
) -> AsyncIterator[Recorded]:
    """Events of the event log in `url`'s virtual host, oldest first, filtered."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "eventlog"})
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        try:
            queue = await channel.declare_queue(topology.EVENT_LOG_STREAM, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise NoEventLog(
                f"no event log in {url.rsplit('/', 1)[-1] or 'the default virtual host'}: "
                "no Bindery service has connected to it yet"
            ) from exc
        records = _consume(queue, start, idle=None if follow else idle)
        async with aclosing(records):
            async for record in records:
                if _wanted(record.event, start, until, launch_id, event_type):
                    yield record
    finally:
        await connection.close()


async def _consume(
    queue: AbstractQueue, start: Start, *, idle: float | None, first_idle: float | None = None
) -> AsyncGenerator[Recorded, None]:
    """The events of the stream `queue` from `start`, through a consumer of their own on its
    channel, until the broker has sent nothing for `idle` seconds (`first_idle` before the first
    message; None: wait forever). Messages are acked as they are taken, so the prefetch bounds
    what waits in memory."""
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    # A time offset starts at the stream chunk holding that time: callers filter the rest.
    tag = await queue.consume(inbox.put, arguments={"x-stream-offset": start})
    try:
        wait = idle if first_idle is None else first_idle
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), wait)
            except TimeoutError:
                return
            wait = idle
            await message.ack()
            record = _recorded(message)
            if record is not None:
                yield record
    finally:
        # The channel may carry other readers' consumers: end only this one, and ack what it
        # was sent meanwhile (one by one: `multiple` would ack the others' deliveries too).
        if not queue.channel.is_closed:
            await queue.cancel(tag)
            while not inbox.empty():
                await inbox.get_nowait().ack()


class StreamReader:
    """Reads of streams in `url`'s virtual host, any number at once, over one connection and
    channel (named `name` in the broker's list of connections). They are opened by the first
    read, not before, and again by the read after the broker closed them: errors reach the
    reads under way as `StreamUnavailable`, the next one reconnects."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._opening = asyncio.Lock()

    async def records(
        self, stream: str, start: Start, *, idle: float, first_idle: float | None = None
    ) -> AsyncGenerator[Recorded, None]:
        """The events of `stream` from `start` (unfiltered: a time offset starts somewhat
        earlier), until the broker has sent nothing for `idle` seconds (`first_idle` before the
        first message)."""
        try:
            channel = await self._open()
            queue = await channel.declare_queue(stream, passive=True)
            records = _consume(queue, start, idle=idle, first_idle=first_idle)
            async with aclosing(records):
                async for record in records:
                    yield record
        # RuntimeError: what aiormq raises for a channel or connection closed under it.
        except (OSError, RuntimeError, aio_pika.exceptions.AMQPError) as exc:
            raise StreamUnavailable(f"cannot read {stream}: {exc}") from exc

    async def _open(self) -> AbstractChannel:
        async with self._opening:
            # A connection the broker closed is not `is_closed` (that means closed by us):
            # it is no longer `connected`.
            if self._connection is None or not self._connection.connected.is_set():
                self._connection = await aio_pika.connect(
                    self._url, client_properties={"connection_name": self._name}
                )
                self._channel = None
            if self._channel is None or self._channel.is_closed:
                # A failed passive declare (no such stream) closes the channel, not the
                # connection: a new channel on the same connection does.
                self._channel = await self._connection.channel()
                await self._channel.set_qos(prefetch_count=PREFETCH)
            return self._channel

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._channel = None


async def recent(url: str, window: timedelta, event_types: Collection[str]) -> AsyncIterator[Event]:
    """Events of the types in `event_types` from the event log's last `window`, up to the call:
    what a restarted service folds back into its view before it consumes its queue again.

    Stops at the first event newer than the call rather than waiting for the log to fall quiet
    (a busy log never does); newer events wait in the caller's queue anyway."""
    began = datetime.now(UTC)
    # `read` is an async generator: closing it here, not at garbage collection, closes its
    # connection when the loop below stops early.
    records = cast(AsyncGenerator[Recorded, None], read(url, start=began - window))
    async with aclosing(records):
        async for record in records:
            if record.event.time > began:
                return
            if record.event.type in event_types:
                yield record.event


def _wanted(
    event: Event,
    start: Start,
    until: datetime | None,
    launch_id: str | None,
    event_type: str | None,
) -> bool:
    return (
        (launch_id is None or event.launch_id == launch_id)
        and (event_type is None or event.type == event_type)
        and (not isinstance(start, datetime) or event.time >= start)
        and (until is None or event.time <= until)
    )


async def replay(records: AsyncIterable[Recorded], into: Bus) -> int:
    """Publish `records` through the connected bus `into`, unchanged; returns how many."""
    count = 0
    async for record in records:
        await into.republish(record.message(), record.routing_key)
        count += 1
    return count
