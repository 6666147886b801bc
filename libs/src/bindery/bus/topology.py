"""Every exchange and queue name in Bindery, in one place: services never spell a queue name.

Domain events go to one durable topic exchange with routing key = event type. Each service has
its own durable queue so its replicas compete for work; gateways get exclusive per-replica queues
because each must see the progress of the browsers it holds. Build logs have their own exchange
so their volume never delays domain events. Every domain event is also kept in a stream: the
event log that replay reads.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS_EXCHANGE = "bindery.events"
LOGS_EXCHANGE = "bindery.logs"
DEAD_LETTER_EXCHANGE = "bindery.dead-letter"
DEAD_LETTER_QUEUE = "bindery.dead-letter"
EVENT_LOG_STREAM = "bindery.event-log"

#: Event types published on LOGS_EXCHANGE instead of EVENTS_EXCHANGE.
LOG_EVENT_TYPES = frozenset({"build-log"})


@dataclass(frozen=True)
class QueueSpec:
    """A queue and the routing keys it is bound to. `name=None` asks for an exclusive queue."""

    name: str | None
    routing_keys: tuple[str, ...]
    exchange: str = EVENTS_EXCHANGE

    @property
    def exclusive(self) -> bool:
        return self.name is None


RESOLVER = QueueSpec("bindery.resolver", ("launch-requested",))
BUILDER = QueueSpec("bindery.builder", ("ref-resolved",))
SCHEDULER = QueueSpec("bindery.scheduler", ("ref-resolved", "image-built", "idle-detected"))
CULLER = QueueSpec("bindery.culler", ("pod-ready", "pod-stopped", "session-activity"))
GATEWAY_EVENTS = QueueSpec(None, ("#",))
GATEWAY_LOGS = QueueSpec(None, ("#",), exchange=LOGS_EXCHANGE)


def exchange_for(event_type: str) -> str:
    return LOGS_EXCHANGE if event_type in LOG_EVENT_TYPES else EVENTS_EXCHANGE
