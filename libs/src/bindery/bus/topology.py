"""Every exchange and queue name in Bindery, in one place: services never spell a queue name.

Domain events go to one durable topic exchange with routing key = event type, or `<type>.<next
step>` for the events whose producer decided what the launch needs next (bindery.events.NextStep):
ref-resolved goes to the builders only when it needs a build (`ref-resolved.build`), to the
scheduler only when its image exists (`ref-resolved.launch`), and to neither for a build-only
launch whose image exists (`ref-resolved.done`); image-built to the scheduler unless its launch was
build-only (`image-built.launch`, `image-built.done`). Each service has its own durable queue so
its replicas compete for work; gateways get exclusive per-replica queues because each must see the
progress of the browsers it holds. Build logs have their own exchange so their volume never delays
domain events. Every domain event is also kept in a stream: the event log that replay reads; every
build-log line in another, which `GET /api/builds/<id>/log` reads. Builds of one repository go to
one builder replica while it lives (`BUILDS_EXCHANGE`).

`declarations()` lists what a virtual host holds before any service connects: every exchange,
the shared queues and streams, and their bindings. Whoever sets the virtual host up declares them
(`python -m bindery.bus.access setup`, or a `Bus` with `declare_topology=True`), because
services run as users that may not configure them (bindery.bus.access).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bindery.events import Event, ImageBuilt, NextStep, RefResolved
from bindery.events.base import routing_key

EVENTS_EXCHANGE = "bindery.events"
LOGS_EXCHANGE = "bindery.logs"
DEAD_LETTER_EXCHANGE = "bindery.dead-letter"
DEAD_LETTER_QUEUE = "bindery.dead-letter"
EVENT_LOG_STREAM = "bindery.event-log"
#: Every build-log line, kept after the build for `GET /api/builds/<id>/log`.
BUILD_LOG_STREAM = "bindery.build-log"
BUILD_LOG_MAX_AGE = "7D"
BUILD_LOG_MAX_BYTES = 2_000_000_000
#: The streams every event is also written to: after a restart the broker takes connections
#: before it has them back, and meanwhile routes nothing to them (bindery.bus.client waits).
STREAMS = (EVENT_LOG_STREAM, BUILD_LOG_STREAM)

#: Sticky builds. ref-resolved.build reaches this consistent-hash exchange (RabbitMQ's
#: rabbitmq_consistent_hash_exchange plugin), which hashes BUILDS_HASH_HEADER (the repository key,
#: set by Bus.publish) onto the queues of the live builder replicas (`builder_replica`): one
#: repository, one replica, its layer cache warm. A message waiting in a replica's queue longer
#: than BUILDS_SPILL_AFTER_MS (its replica is dead, or busy beyond its prefetch) is dead-lettered
#: to BUILDS_UNCLAIMED_EXCHANGE, as is one routed while no replica is bound (alternate exchange):
#: its queue, BUILDER, is consumed by every replica. A build holds its delivery, so a replica
#: dying mid-build hands the launch on this way too.
BUILDS_EXCHANGE = "bindery.builds"
BUILDS_HASH_HEADER = "bindery-repo-key"
BUILDS_UNCLAIMED_EXCHANGE = "bindery.builds.unclaimed"
BUILDS_SPILL_AFTER_MS = 10_000

#: Event types published on LOGS_EXCHANGE instead of EVENTS_EXCHANGE.
LOG_EVENT_TYPES = frozenset({"build-log"})


#: What a queue bound with "#" carries: every event of its exchange.
EVERY_EVENT = ("#",)


def to(event_class: type[Event], step: NextStep) -> str:
    """The binding key of `event_class`'s events going to `step`."""
    assert step in event_class.steps, f"{event_class.type} never goes to {step}"
    return routing_key(event_class.type, step)


def every_route(event_class: type[Event]) -> str:
    """The binding key of all of `event_class`'s events, whichever step they go to."""
    return f"{event_class.type}.*" if event_class.steps else event_class.type


def carried(key: str) -> tuple[str, NextStep | None]:
    """The event type and step (None: every step, or the type has none) a binding key brings."""
    event_type, _, step = key.partition(".")
    return event_type, (NextStep(step) if step and step != "*" else None)


@dataclass(frozen=True)
class QueueSpec:
    """A queue and the routing keys it is bound to. `name=None` asks for an exclusive queue."""

    name: str | None
    routing_keys: tuple[str, ...]
    exchange: str = EVENTS_EXCHANGE
    arguments: Mapping[str, Any] = field(default_factory=dict)
    """Queue arguments beyond the dead-letter exchange every durable queue gets."""
    takes: tuple[str, ...] = ()
    """The event types it carries, where its routing keys are not event types (a hash ring's
    weights, an alternate exchange's "")."""

    @property
    def exclusive(self) -> bool:
        return self.name is None

    @property
    def carries(self) -> tuple[str, ...]:
        """The routing keys its bindings bring (EVERY_EVENT: all of its exchange's;
        `carried` reads one): what a service's handler table for it must handle
        (bindery.bus.handlers)."""
        return self.takes or self.routing_keys

    @property
    def event_types(self) -> frozenset[str]:
        """The event types it carries, whatever their step."""
        return frozenset(carried(key)[0] for key in self.carries)


RESOLVER = QueueSpec("bindery.resolver", ("launch-requested",))
#: What the builders build: the ref-resolved events whose image does not exist.
BUILDS = to(RefResolved, NextStep.BUILD)
BUILDER = QueueSpec(
    "bindery.builder.unclaimed",
    ("",),
    exchange=BUILDS_UNCLAIMED_EXCHANGE,
    takes=(BUILDS,),
)
SCHEDULER = QueueSpec(
    "bindery.scheduler", (to(RefResolved, NextStep.LAUNCH), to(ImageBuilt, NextStep.LAUNCH))
)
#: Apart from launches: launches waiting for a seat must never hold back the stop that frees one.
SCHEDULER_STOPS = QueueSpec("bindery.scheduler-stops", ("idle-detected", "launch-abandoned"))
CULLER = QueueSpec("bindery.culler", ("pod-ready", "pod-stopped", "session-activity"))
#: Every step of a launch, up to its end (pod-ready or launch-failed), for the launch archive.
ARCHIVER = QueueSpec(
    "bindery.archiver",
    (
        "launch-requested",
        every_route(RefResolved),
        "launch-queued",
        "build-started",
        every_route(ImageBuilt),
        "pod-scheduled",
        "pod-ready",
        "launch-failed",
        "launch-abandoned",
    ),
)
#: Exclusive queues are named here, not by the broker: a robust connection redeclares them by
#: name when it reconnects, and the name says whose permissions cover them (bindery.bus.access).
EXCLUSIVE_QUEUE_PREFIX = "bindery.exclusive."
GATEWAY_EVENTS = QueueSpec(None, EVERY_EVENT)
GATEWAY_LOGS = QueueSpec(None, ("#",), exchange=LOGS_EXCHANGE, takes=tuple(LOG_EVENT_TYPES))


#: The durable queues services share, declared with their bindings by whoever sets the virtual
#: host up: a service only looks them up (it may not configure them).
SHARED_QUEUES = (RESOLVER, BUILDER, SCHEDULER, SCHEDULER_STOPS, CULLER, ARCHIVER)

BUILDER_REPLICA_PREFIX = "bindery.builder.replica."


def builder_replica(replica: str) -> QueueSpec:
    """The queue of one builder replica on BUILDS_EXCHANGE (binding key = weight on the ring).
    Durable and not exclusive: a replica's death must not take the launches queued for it.
    Its name is known only when the replica runs, so the builder declares it itself."""
    return QueueSpec(
        f"{BUILDER_REPLICA_PREFIX}{replica}",
        ("1",),
        exchange=BUILDS_EXCHANGE,
        takes=(BUILDS,),
        arguments={
            "x-message-ttl": BUILDS_SPILL_AFTER_MS,
            "x-dead-letter-exchange": BUILDS_UNCLAIMED_EXCHANGE,
        },
    )


#: Each service that runs one active replica at a time holds an exclusive queue of this prefix
#: and its name while it is the active one (bindery.bus.leadership).
LOCK_QUEUE_PREFIX = "bindery.lock."


def lock_queue(service: str) -> str:
    return f"{LOCK_QUEUE_PREFIX}{service}"


def exchange_for(event_type: str) -> str:
    return LOGS_EXCHANGE if event_type in LOG_EVENT_TYPES else EVENTS_EXCHANGE


def queue_arguments(spec: QueueSpec) -> dict[str, Any]:
    """What a durable consumer queue is declared with: its dead letters go to
    DEAD_LETTER_EXCHANGE unless its spec names another."""
    return {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, **spec.arguments}


@dataclass(frozen=True)
class ExchangeDeclaration:
    name: str
    type: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDeclaration:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    source: str
    destination: str
    routing_key: str
    destination_type: str = "queue"
    """`queue`, or `exchange` for an exchange-to-exchange binding."""


@dataclass(frozen=True)
class Topology:
    """Everything durable a virtual host holds before any service connects."""

    exchanges: tuple[ExchangeDeclaration, ...]
    queues: tuple[QueueDeclaration, ...]
    bindings: tuple[Binding, ...]


def declarations(
    event_log_max_age: str = "7D", event_log_max_bytes: int = 1_000_000_000
) -> Topology:
    """The shared topology; the event log's retention comes from the settings of whoever
    declares it (BINDERY_EVENT_LOG_MAX_AGE, BINDERY_EVENT_LOG_MAX_BYTES)."""
    exchanges = (
        ExchangeDeclaration(EVENTS_EXCHANGE, "topic"),
        ExchangeDeclaration(LOGS_EXCHANGE, "topic"),
        ExchangeDeclaration(DEAD_LETTER_EXCHANGE, "fanout"),
        # Sticky builds (see BUILDS_EXCHANGE; needs rabbitmq_consistent_hash_exchange).
        ExchangeDeclaration(BUILDS_UNCLAIMED_EXCHANGE, "fanout"),
        ExchangeDeclaration(
            BUILDS_EXCHANGE,
            "x-consistent-hash",
            {"hash-header": BUILDS_HASH_HEADER, "alternate-exchange": BUILDS_UNCLAIMED_EXCHANGE},
        ),
    )
    queues = (
        QueueDeclaration(DEAD_LETTER_QUEUE),
        QueueDeclaration(
            EVENT_LOG_STREAM,
            {
                "x-queue-type": "stream",
                "x-max-age": event_log_max_age,
                "x-max-length-bytes": event_log_max_bytes,
            },
        ),
        QueueDeclaration(
            BUILD_LOG_STREAM,
            {
                "x-queue-type": "stream",
                "x-max-age": BUILD_LOG_MAX_AGE,
                "x-max-length-bytes": BUILD_LOG_MAX_BYTES,
            },
        ),
        *(QueueDeclaration(_named(spec), queue_arguments(spec)) for spec in SHARED_QUEUES),
    )
    bindings = (
        Binding(DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ""),
        Binding(EVENTS_EXCHANGE, EVENT_LOG_STREAM, "#"),
        Binding(LOGS_EXCHANGE, BUILD_LOG_STREAM, "#"),
        Binding(EVENTS_EXCHANGE, BUILDS_EXCHANGE, BUILDS, destination_type="exchange"),
        *(
            Binding(spec.exchange, _named(spec), key)
            for spec in SHARED_QUEUES
            for key in spec.routing_keys
        ),
    )
    return Topology(exchanges, queues, bindings)


def _named(spec: QueueSpec) -> str:
    assert spec.name is not None, "a shared queue has a name"
    return spec.name
