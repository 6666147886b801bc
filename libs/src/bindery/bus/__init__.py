"""The RabbitMQ bus every service uses: publish events, consume them with one ack policy."""

from bindery.bus import topology
from bindery.bus.client import Bus, Handler, Retry
from bindery.bus.topology import QueueSpec

__all__ = ["Bus", "Handler", "QueueSpec", "Retry", "topology"]
