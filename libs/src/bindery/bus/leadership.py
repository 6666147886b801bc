"""One active replica at a time, for the services whose state must be one process's: the
scheduler (seats and quotas), the culler (each session's activity) and the archiver (each
launch's record).

In: the broker's URL and the service's name. Out: `acquire` returns once this replica holds the
service's lock (a standby waits there, trying again every `retry` seconds); `keep` returns only
when the lock is lost to another replica, and the replica must then stop: whatever it still
does may be done twice.

The lock is an exclusive queue, `bindery.lock.<service>`, declared on a connection of its own.
RabbitMQ lets one connection at a time hold an exclusive queue of a name (the others are
refused with RESOURCE_LOCKED) and deletes it when that connection closes: when the process dies
(its socket closes at once, so a standby takes over within `retry` seconds), when the broker
restarts, or when heartbeats stop. The connection is a plain one, not the robust connection of
the bus: a lock must never come back by itself. After a lost connection `keep` takes the lock
back itself as soon as the broker answers; nobody else could take it while this replica could
not reach the broker, unless the broker lost only this replica (a network partition), and then
another replica holds it and `keep` returns.

Why a lock, not partitions: seats, quotas and the warm pool are counted over every node and
repository at once, and RabbitMQ keeps no shared state to count them in. A second active
scheduler would place on seats the first one holds.
"""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractConnection

from bindery.bus import topology
from bindery.bus.client import CONNECTION_LOST

log = structlog.get_logger("bindery.bus.leadership")


class Leadership:
    def __init__(self, url: str, service: str, *, retry: float = 2.0) -> None:
        self._url = url
        self._service = service
        self._retry = retry
        self.queue = topology.lock_queue(service)
        self._connection: AbstractConnection | None = None
        self._connection_lost = asyncio.Event()
        self.held = False

    async def acquire(self) -> None:
        """Return once this replica holds the lock."""
        standby_logged = False
        while not await self._attempt():
            if not standby_logged:
                log.info("leadership.standby", lock=self.queue)
                standby_logged = True
            await asyncio.sleep(self._retry)
        log.info("leadership.acquired", lock=self.queue)

    async def keep(self) -> None:
        """Hold the lock through lost connections; return once another replica has it."""
        while True:
            await self._connection_lost.wait()
            log.warning("leadership.connection_lost", lock=self.queue)
            held = await self._attempt()
            while held is None:  # the broker is away: nobody can take the lock meanwhile
                await asyncio.sleep(self._retry)
                held = await self._attempt()
            if not held:
                log.error("leadership.lost", lock=self.queue)
                return
            log.info("leadership.taken_back", lock=self.queue)

    async def _attempt(self) -> bool | None:
        """Declare the lock queue: True if this replica holds it now, False if another
        replica's connection does, None if the broker could not be asked."""
        self.held = False
        try:
            channel = await (await self._connect()).channel()
            await channel.declare_queue(self.queue, exclusive=True, durable=False)
        except aiormq.exceptions.ChannelLockedResource:
            return False  # the broker closed that channel; the connection stays for the next try
        except (*CONNECTION_LOST, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            # RuntimeError: aiormq's word for a connection that closed under the call.
            log.info("leadership.broker_away", lock=self.queue, error=repr(exc))
            return None
        self.held = True
        return True

    async def _connect(self) -> AbstractConnection:
        if self._connection is not None:
            return self._connection
        connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": f"{self._service}-lock"}
        )
        self._connection_lost.clear()
        connection.close_callbacks.add(self._closed)
        self._connection = connection
        return connection

    def _closed(self, connection: object, _reason: object = None) -> None:
        # Forget it at once: its is_closed may still say False while its callbacks run.
        if connection is self._connection:
            self._connection = None
            self.held = False
            self._connection_lost.set()

    async def release(self) -> None:
        """Give the lock up (a stopping replica): a standby takes it at its next try."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
        self.held = False
