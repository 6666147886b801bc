"""Every exchange and queue name in Bindery, in one place: services never spell a queue name.

Domain events go to one durable topic exchange with routing key = event type. Each service has
its own durable queue so its replicas compete for work; gateways get exclusive per-replica queues
because each must see the progress of the browsers it holds. Build logs have their own exchange
so their volume never delays domain events. Every domain event is also kept in a stream: the
event log that replay reads; every build-log line in another, which `GET /api/builds/<id>/log`
reads. Builds of one repository go to one builder replica while it lives (`BUILDS_EXCHANGE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EVENTS_EXCHANGE = "bindery.events"
LOGS_EXCHANGE = "bindery.logs"
DEAD_LETTER_EXCHANGE = "bindery.dead-letter"
DEAD_LETTER_QUEUE = "bindery.dead-letter"
EVENT_LOG_STREAM = "bindery.event-log"
#: Every build-log line, kept after the build for `GET /api/builds/<id>/log`.
BUILD_LOG_STREAM = "bindery.build-log"
BUILD_LOG_MAX_AGE = "7D"
BUILD_LOG_MAX_BYTES = 2_000_000_000

#: Sticky builds. ref-resolved also reaches this consistent-hash exchange (RabbitMQ's
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


@dataclass(frozen=True)
class QueueSpec:
    """A queue and the routing keys it is bound to. `name=None` asks for an exclusive queue."""

    name: str | None
    routing_keys: tuple[str, ...]
    exchange: str = EVENTS_EXCHANGE
    arguments: Mapping[str, Any] = field(default_factory=dict)
    """Queue arguments beyond the dead-letter exchange every durable queue gets."""

    @property
    def exclusive(self) -> bool:
        return self.name is None


RESOLVER = QueueSpec("bindery.resolver", ("launch-requested",))
BUILDER = QueueSpec("bindery.builder.unclaimed", ("",), exchange=BUILDS_UNCLAIMED_EXCHANGE)
SCHEDULER = QueueSpec("bindery.scheduler", ("ref-resolved", "image-built"))
#: Apart from launches: launches waiting for a seat must never hold back the stop that frees one.
SCHEDULER_STOPS = QueueSpec("bindery.scheduler-stops", ("idle-detected",))
CULLER = QueueSpec("bindery.culler", ("pod-ready", "pod-stopped", "session-activity"))
#: Every step of a launch, up to its end (pod-ready or launch-failed), for the launch archive.
ARCHIVER = QueueSpec(
    "bindery.archiver",
    (
        "launch-requested",
        "ref-resolved",
        "launch-queued",
        "build-started",
        "image-built",
        "pod-scheduled",
        "pod-ready",
        "launch-failed",
    ),
)
GATEWAY_EVENTS = QueueSpec(None, ("#",))
GATEWAY_LOGS = QueueSpec(None, ("#",), exchange=LOGS_EXCHANGE)


def builder_replica(replica: str) -> QueueSpec:
    """The queue of one builder replica on BUILDS_EXCHANGE (binding key = weight on the ring).
    Durable and not exclusive: a replica's death must not take the launches queued for it."""
    return QueueSpec(
        f"bindery.builder.replica.{replica}",
        ("1",),
        exchange=BUILDS_EXCHANGE,
        arguments={
            "x-message-ttl": BUILDS_SPILL_AFTER_MS,
            "x-dead-letter-exchange": BUILDS_UNCLAIMED_EXCHANGE,
        },
    )


def exchange_for(event_type: str) -> str:
    return LOGS_EXCHANGE if event_type in LOG_EVENT_TYPES else EVENTS_EXCHANGE
