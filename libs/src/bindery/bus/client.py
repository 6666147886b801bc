"""aio-pika client: connects with retries, declares the shared topology (or, as a service, only
looks it up), publishes with confirms, and consumes with one ack/nack policy driven by exceptions.

In: events to publish; queue specs with handlers. Out: messages on RabbitMQ; handler calls.
Policy: success -> ack; `InvalidEvent` -> dead-letter (it can never succeed); `Retry` -> requeue
after a pause; any other error -> requeue once, dead-letter if it fails again when redelivered.

A broker restart closes every channel under the service while its handlers run. Their work goes
on (aio-pika cancels a consumer's callback when its channel closes: the handler runs apart from
it): a publish that fails because its connection or channel is gone is sent again once the robust
connection has reopened them (until `publish_retry_for`); a delivery that was lost with its
channel (the broker requeued it) is not settled; and its redelivery, recognised by its event id,
waits for the handler already running on it, or is acked at once if that handler succeeded,
instead of running a second one (`_Deliveries`). After a restart the broker takes connections
before it has its streams back (the event log, the build log), and routes nothing to them
meanwhile: publishes wait until both answer again, so the event log misses no event (a gateway
that reconnected late reads what it missed from there).
Every message carries the W3C trace context of its publisher in its headers; every handled
message runs in a span continuing it, and is counted and timed in the service's metrics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from opentelemetry.trace import SpanKind

from bindery import metrics, telemetry
from bindery.bus import topology
from bindery.bus.handlers import Handler, Handlers
from bindery.bus.topology import QueueSpec
from bindery.events import Event, InvalidEvent, LaunchContext, parse_event

log = structlog.get_logger("bindery.bus")


#: What a publish or a settlement raises when its connection or channel is gone (the broker
#: restarted, the network broke), as opposed to the broker refusing it: worth trying again once
#: the robust connection is back. TimeoutError: a confirm that never came, from a broker that
#: died after taking the message; sending it again may duplicate it, and consumers drop the
#: duplicate by its event id.
CONNECTION_LOST = (
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
)
#: What connecting to, or talking with, a broker that cannot be reached or refuses raises: for
#: callers outside the bus (the CLI) that report it, so aio-pika stays inside bindery.bus.
BROKER_ERRORS: tuple[type[Exception], ...] = (OSError, aio_pika.exceptions.AMQPError)
#: Event ids of handled deliveries remembered per process, to recognise their redeliveries.
REMEMBERED_DELIVERIES = 10_000


class Retry(Exception):
    """Raised by a handler when the message may succeed later (a dependency is down)."""

    def __init__(self, reason: str, delay: float = 2.0) -> None:
        super().__init__(reason)
        self.delay = delay


class Bus:
    def __init__(
        self,
        url: str,
        service: str,
        *,
        event_log_max_age: str = "7D",
        event_log_max_bytes: int = 1_000_000_000,
        publish_timeout: float = 10.0,
        publish_retry_for: float = 300.0,
        connect_timeout: float = 60.0,
        declare_topology: bool = True,
    ) -> None:
        """`declare_topology=False` is how services connect: as users that may not configure
        the shared topology (bindery.bus.access), they only look up its exchanges and queues,
        which whoever set the virtual host up declared; they still declare what is theirs
        alone (a gateway's exclusive queues, a builder replica's queue).

        `publish_timeout` bounds one attempt (its confirm); `publish_retry_for` how long a
        publish keeps trying again after losing its connection (BINDERY_PUBLISH_RETRY_SECONDS)."""
        self._url = url
        self._service = service
        self._topology = (
            topology.declarations(event_log_max_age, event_log_max_bytes)
            if declare_topology
            else None
        )
        self._publish_timeout = publish_timeout
        self._publish_retry_for = publish_retry_for
        self._connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._log_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumed: list[AbstractQueue] = []
        self._deliveries = _Deliveries()
        self._handling: set[asyncio.Future[None]] = set()
        self._streams_back = asyncio.Event()
        """Set while the broker has its streams: cleared when the connection is lost, set
        again once they answer after the reconnect (`_until_streams_answer`)."""
        self._streams_check: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def connect(self) -> None:
        """Connect, retrying until `connect_timeout`: services may start before the broker."""
        deadline = asyncio.get_running_loop().time() + self._connect_timeout
        delay = 0.2
        while True:
            try:
                self._connection = await aio_pika.connect_robust(
                    self._url, client_properties={"connection_name": self._service}
                )
                break
            except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                log.warning("bus.connect_retry", error=str(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._publish_channel = await self._connection.channel(publisher_confirms=True)
        # Build logs get a channel of their own so their volume never delays domain events.
        self._log_channel = await self._connection.channel(publisher_confirms=True)
        if self._topology is not None:
            await declare(self._publish_channel, self._topology)
        for name in (topology.EVENTS_EXCHANGE, topology.DEAD_LETTER_EXCHANGE):
            self._exchanges[name] = await self._publish_channel.get_exchange(name)
        self._exchanges[topology.LOGS_EXCHANGE] = await self._log_channel.get_exchange(
            topology.LOGS_EXCHANGE
        )
        self._streams_back.set()
        self._connection.close_callbacks.add(self._lost)
        self._connection.reconnect_callbacks.add(self._reconnected)
        log.info("bus.connected", service=self._service)

    def _lost(self, *_: object) -> None:
        self._streams_back.clear()

    def _reconnected(self, *_: object) -> None:
        if self._streams_check is not None:
            self._streams_check.cancel()
        self._streams_check = asyncio.create_task(self._until_streams_answer())

    async def _until_streams_answer(self) -> None:
        """Ask for the streams (a passive declare: no permission needed) until the broker has
        them, then let publishes through again."""
        assert self._connection is not None, "connect() first"
        pause = 0.1
        while True:
            try:
                async with (
                    asyncio.timeout(self._publish_timeout),
                    self._connection.channel(publisher_confirms=False) as channel,
                ):
                    for stream in topology.STREAMS:
                        await channel.declare_queue(stream, passive=True)
                break
            # RuntimeError: aiormq's word for a connection that closed under the call.
            except (*CONNECTION_LOST, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
                log.info("bus.streams_not_back", error=repr(exc))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        log.info("bus.streams_back")
        self._streams_back.set()

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the connection comes back after a loss, once its channels,
        queues, bindings and consumers are restored. A queue of this process's own (exclusive)
        went with the old connection: what was published meanwhile never reached it."""
        assert self._connection is not None, "connect() first"
        self._connection.reconnect_callbacks.add(lambda _connection: callback())

    async def close(self) -> None:
        for handling in self._handling:
            handling.cancel()
        await asyncio.gather(*self._handling, return_exceptions=True)
        if self._streams_check is not None:
            self._streams_check.cancel()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, event: Event, headers: dict[str, str] | None = None) -> None:
        """Publish and wait for the broker's confirm; through a broken connection, again once
        it is back (bounded, so a long outage is an error)."""
        with self._publish_span(event):
            message = aio_pika.Message(
                event.to_json(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event.event_id,
                correlation_id=event.launch_id,
                type=event.type,
                app_id=self._service,
                headers=telemetry.inject(_routing_headers(event, headers)),
            )
            try:
                await self._publish(topology.exchange_for(event.type), message, event.routing_key)
            except Exception:
                metrics.EVENTS_PUBLISHED.labels(event.type, "error").inc()
                raise
        metrics.EVENTS_PUBLISHED.labels(event.type, "ok").inc()

    async def republish(self, message: aio_pika.Message, routing_key: str) -> None:
        """Publish a recorded message as it was (the event log's replay), with confirms."""
        await self._publish(topology.exchange_for(routing_key), message, routing_key)

    async def _publish(self, exchange: str, message: aio_pika.Message, routing_key: str) -> None:
        """Publish with confirms. A publish that fails because the connection or channel is
        gone waits for the robust connection to reopen the channel, and for the broker to have
        its streams back, and tries again, until `publish_retry_for` has passed since the first
        try; the last error is raised then."""
        # Build logs have a channel of their own (see connect).
        channel = self._log_channel if exchange == topology.LOGS_EXCHANGE else self._publish_channel
        assert channel is not None, "connect() first"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._publish_retry_for
        pause = 0.2
        while True:
            if not self._streams_back.is_set():
                try:
                    await asyncio.wait_for(
                        self._streams_back.wait(), max(give_up - loop.time(), 0.01)
                    )
                except TimeoutError:
                    raise ConnectionError(
                        f"the broker did not have its streams back within "
                        f"{self._publish_retry_for:.0f} s of the publish"
                    ) from None
            try:
                await self._exchanges[exchange].publish(
                    message, routing_key=routing_key, timeout=self._publish_timeout
                )
                return
            except CONNECTION_LOST as exc:
                left = give_up - loop.time()
                if left <= 0 or self._connection is None:
                    raise
                log.warning("bus.publish_retry", routing_key=routing_key, error=repr(exc))
                metrics.PUBLISH_RETRIES.labels(routing_key).inc()
                # The channel may not know yet that its connection is gone: pause before
                # asking whether it is ready, or the retries would spin.
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 5.0)
                try:
                    await asyncio.wait_for(channel.ready(), max(give_up - loop.time(), 0.01))
                except TimeoutError:
                    raise exc from None

    @contextmanager
    def _publish_span(self, event: Event) -> Iterator[None]:
        """A producer span per domain event (with no current span it starts the launch's
        trace); build-log lines are too many for a span each and carry the current context."""
        if event.type in topology.LOG_EVENT_TYPES:
            yield
            return
        with telemetry.span(
            f"publish {event.type}",
            kind=SpanKind.PRODUCER,
            attributes={"bindery.launch_id": event.launch_id, "bindery.event_id": event.event_id},
        ):
            yield

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in each queue this process consumes (for the metrics' gauge)."""
        depths: dict[str, int] = {}
        for queue in self._consumed:
            declared = await queue.declare(timeout=self._publish_timeout)
            depths[queue.name] = declared.message_count or 0
        return depths

    async def consumer_counts(self, queues: Iterable[str]) -> dict[str, int]:
        """Live consumers of each named queue, as the broker counts them (a passive declare,
        which needs no permission). A missing queue closes the channel it was asked on, so each
        call asks on a channel of its own and raises for it (aio_pika's ChannelNotFoundEntity).
        Bounded as a publish is: a broker that hangs is an error, not a wait."""
        assert self._connection is not None, "connect() first"
        counts: dict[str, int] = {}
        async with (
            asyncio.timeout(self._publish_timeout),
            self._connection.channel(publisher_confirms=False) as channel,
        ):
            for name in queues:
                declared = await channel.declare_queue(name, passive=True)
                counts[name] = declared.declaration_result.consumer_count or 0
        return counts

    async def consume(self, spec: QueueSpec, handlers: Handlers, *, prefetch: int = 8) -> str:
        """Start consuming `spec`, each event going to its handler in `handlers` (checked
        against what the queue carries first: HandlersMismatch); returns the queue name."""
        assert self._connection is not None, "connect() first"
        handlers.check(spec)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        exchange = await channel.get_exchange(spec.exchange)
        queue: AbstractQueue
        if spec.exclusive:
            queue = await channel.declare_queue(
                f"{topology.EXCLUSIVE_QUEUE_PREFIX}{self._service}.{uuid.uuid4().hex}",
                exclusive=True,
                auto_delete=True,
            )
        elif self._topology is None and spec in topology.SHARED_QUEUES:
            queue = await _look_up(channel, spec)
        else:
            queue = await channel.declare_queue(
                spec.name, durable=True, arguments=topology.queue_arguments(spec)
            )
        if not queue.passive:
            for key in spec.routing_keys:
                await queue.bind(exchange, routing_key=key)
        self._consumed.append(queue)

        async def on_message(message: AbstractIncomingMessage) -> None:
            # A channel closing under a delivery (a broker restart) cancels this callback: the
            # handler's work goes on regardless, its publishes waiting for the connection, and
            # the message's redelivery waits for it (_Deliveries). Only `close` cancels it.
            handling = asyncio.ensure_future(self._dispatch(message, handlers, spec))
            self._handling.add(handling)
            handling.add_done_callback(self._handling.discard)
            await asyncio.shield(handling)

        await queue.consume(on_message)
        return queue.name

    async def _dispatch(
        self, message: AbstractIncomingMessage, handlers: Handlers, spec: QueueSpec
    ) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            event_type=message.type, launch_id=message.correlation_id
        )
        started = time.monotonic()
        outcome = "error"
        try:
            with self._consume_span(message, spec):
                outcome = await self._handle(message, handlers, spec)
        finally:
            event_type = message.type or "unknown"
            metrics.EVENTS_CONSUMED.labels(event_type, outcome).inc()
            metrics.HANDLER_SECONDS.labels(event_type, outcome).observe(time.monotonic() - started)
            structlog.contextvars.clear_contextvars()

    @contextmanager
    def _consume_span(self, message: AbstractIncomingMessage, spec: QueueSpec) -> Iterator[None]:
        """Continue the publisher's trace: a consumer span per domain event, the bare context
        for build-log lines (so their log lines still carry the trace id)."""
        parent = telemetry.extract(message.headers)
        if spec.exchange == topology.LOGS_EXCHANGE:
            with telemetry.continued(parent):
                yield
            return
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": spec.name or "exclusive",
            "bindery.launch_id": message.correlation_id or "",
            "bindery.event_id": message.message_id or "",
        }
        with telemetry.span(
            f"handle {message.type}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            yield

    async def _handle(
        self, message: AbstractIncomingMessage, handlers: Handlers, spec: QueueSpec
    ) -> str:
        """Run the event's handler under the ack policy; returns the outcome for the metrics."""
        try:
            event = parse_event(message.body)
            handler = handlers.handler_for(event)
            if handler is None:
                # Only a binding added by hand brings one: it can never be handled here.
                raise InvalidEvent(f"{event.type} is not an event {spec.name} carries")
        except InvalidEvent as exc:
            log.error("bus.invalid_message", reason=str(exc), queue=spec.name)
            telemetry.fail("invalid message")
            await _settle(self._dead_letter(message, spec))
            return "invalid"
        if await self._deliveries.handled(handler, event.event_id):
            # Its first delivery was lost with its channel after (or while) the handler did
            # the work: the redelivery only needs settling.
            log.info("bus.redelivery_already_handled", event_id=event.event_id)
            await _settle(message.ack())
            return "duplicate"
        try:
            with self._deliveries.running(handler, event.event_id):
                await handler(event)
        except Retry as exc:
            log.warning("bus.retry", reason=str(exc), delay=exc.delay)
            await asyncio.sleep(exc.delay)
            await _settle(message.nack(requeue=True))
            return "retry"
        except Exception as exc:
            telemetry.fail(f"{type(exc).__name__}: {exc}")
            if message.redelivered:
                log.exception("bus.handler_failed_twice")
                await _settle(self._dead_letter(message, spec))
            else:
                log.exception("bus.handler_failed")
                await _settle(message.nack(requeue=True))
            return "error"
        await _settle(message.ack())
        return "ok"

    async def _dead_letter(self, message: AbstractIncomingMessage, spec: QueueSpec) -> None:
        if spec.exclusive:
            # Exclusive queues have no dead-letter argument: copy the message there ourselves.
            await self._publish(
                topology.DEAD_LETTER_EXCHANGE,
                aio_pika.Message(message.body, headers=dict(message.headers or {})),
                "",
            )
            await message.ack()
        else:
            await message.reject(requeue=False)


async def _settle(settlement: Awaitable[None]) -> None:
    """Ack, nack or reject a delivery, unless its channel is gone: the broker has requeued it
    then, and its redelivery is settled instead (`_Deliveries`)."""
    try:
        await settlement
    except CONNECTION_LOST as exc:
        log.warning("bus.delivery_lost", error=repr(exc))


class _Deliveries:
    """The events this process's handlers are running or have handled, by handler and event id,
    so that a redelivery (its first delivery lost with a channel the broker closed, or a
    publisher's retry of a message whose confirm was lost) neither runs a handler twice at once
    nor redoes work that succeeded. Handled ids are remembered up to REMEMBERED_DELIVERIES."""

    def __init__(self) -> None:
        self._running: dict[tuple[Handler, str], asyncio.Event] = {}
        self._done: OrderedDict[tuple[Handler, str], None] = OrderedDict()

    async def handled(self, handler: Handler, event_id: str) -> bool:
        """Whether `handler` succeeded on `event_id`, waiting for it if it is running."""
        key = (handler, event_id)
        running = self._running.get(key)
        if running is not None:
            await running.wait()
        return key in self._done

    @contextmanager
    def running(self, handler: Handler, event_id: str) -> Iterator[None]:
        key = (handler, event_id)
        finished = self._running[key] = asyncio.Event()
        try:
            yield
            self._done[key] = None
            while len(self._done) > REMEMBERED_DELIVERIES:
                self._done.popitem(last=False)
        finally:
            del self._running[key]
            finished.set()


async def declare(channel: AbstractChannel, declared: topology.Topology) -> None:
    """Declare the shared topology (idempotent): exchanges, then queues, then bindings."""
    for exchange in declared.exchanges:
        await channel.declare_exchange(
            exchange.name, exchange.type, durable=True, arguments=dict(exchange.arguments)
        )
    for queue in declared.queues:
        await channel.declare_queue(queue.name, durable=True, arguments=dict(queue.arguments))
    for binding in declared.bindings:
        if binding.destination_type == "exchange":
            destination = await channel.get_exchange(binding.destination)
            await destination.bind(binding.source, routing_key=binding.routing_key)
        else:
            bound = await channel.get_queue(binding.destination)
            await bound.bind(binding.source, routing_key=binding.routing_key)


async def _look_up(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """A shared queue, declared (with its bindings) by whoever set the virtual host up."""
    try:
        return await channel.declare_queue(spec.name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise RuntimeError(
            f"queue {spec.name} does not exist: set the virtual host up first "
            "(scripts/infra.sh access, or python -m bindery.bus.access setup)"
        ) from exc


def _routing_headers(event: Event, headers: dict[str, str] | None) -> dict[str, str]:
    """The caller's headers, plus the repository key topology.BUILDS_EXCHANGE hashes on."""
    routed = dict(headers or {})
    context = getattr(event, "context", None)
    if isinstance(context, LaunchContext):
        routed[topology.BUILDS_HASH_HEADER] = context.repo_key
    return routed
