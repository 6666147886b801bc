"""The RabbitMQ bus every service uses: publish events, consume them with one ack policy. The only
package that imports aio-pika (an import-linter contract): others catch `BROKER_ERRORS`.

The client (aio-pika, telemetry, metrics) loads on first use of `Bus`, `Retry` or
`BROKER_ERRORS`, so `python -m bindery.bus.access`, which needs only the topology and the event
types, starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bindery.bus import topology
from bindery.bus.handlers import Handler, Handlers
from bindery.bus.topology import QueueSpec

if TYPE_CHECKING:
    from bindery.bus.client import BROKER_ERRORS, Bus, Retry

__all__ = ["BROKER_ERRORS", "Bus", "Handler", "Handlers", "QueueSpec", "Retry", "topology"]


def __getattr__(name: str) -> Any:
    if name in ("BROKER_ERRORS", "Bus", "Retry"):
        from bindery.bus import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
