"""The bus through a broker restart, on a RabbitMQ node of the test's own: every event whose
publish returned is in the event log, those published while the broker was away and those
published just after it came back, before it had its streams back (issue 14: a gateway that
reconnected late reads what it missed from the event log, so a hole there hangs a launch).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from bindery.bus import Bus
from bindery.bus.eventlog import NoEventLog, read
from bindery.events import LaunchRequested
from tests.support.eventually import eventually
from tests.support.privatebroker import PrivateBroker
from tests.support.stack import AMQP_DIR, SLOT

pytestmark = pytest.mark.chaos

#: Past the slots test runs and the chaos suite use: this broker's ports are its own.
RESTART_SLOT = SLOT + 60
#: Generous: a loaded machine restarts RabbitMQ slowly; only a lost event should fail this.
LIMIT = 120.0


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    broker = PrivateBroker(Path(tempfile.mkdtemp(prefix="bindery-bus-restart-")), RESTART_SLOT)
    broker.start()
    try:
        yield broker
    finally:
        broker.remove()


@pytest.fixture
async def bus_url(broker: PrivateBroker) -> AsyncIterator[str]:
    url, _ = await asyncio.to_thread(
        broker.fresh_vhost, f"bindery-test-{RESTART_SLOT}", AMQP_DIR / broker.node
    )
    yield url


async def test_no_event_published_across_a_restart_is_missing_from_the_event_log(
    broker: PrivateBroker, bus_url: str
) -> None:
    # Reconnecting at once, as a service whose last try came just before the broker was back.
    bus = Bus(f"{bus_url}?reconnect_interval=0.1", "restart-test", publish_retry_for=LIMIT)
    await bus.connect()
    published: list[str] = []
    stop = asyncio.Event()

    async def publish_steadily() -> None:
        while not stop.is_set():
            event = LaunchRequested(launch_id=f"l-{len(published)}", provider="git", spec="x/main")
            await bus.publish(event)
            published.append(event.event_id)
            await asyncio.sleep(0.02)

    publishing = asyncio.create_task(publish_steadily())
    try:
        await eventually(lambda: len(published) >= 10, within=LIMIT, what="publishes before")
        await asyncio.to_thread(broker.restart)
        restarted_at = len(published)
        # The publisher goes on through the reconnect and well past it.
        await eventually(
            lambda: len(published) >= restarted_at + 100, within=LIMIT, what="publishes after"
        )
    finally:
        stop.set()
        await publishing
        await bus.close()

    async def logged() -> set[str]:
        return {record.event.event_id async for record in read(bus_url)}

    in_the_log = await eventually(
        logged,
        within=LIMIT,
        ignoring=(NoEventLog, aio_pika.exceptions.AMQPError),
        what="the log read",
    )
    missing = [i for i, event_id in enumerate(published) if event_id not in in_the_log]
    assert not missing, f"{len(missing)} of {len(published)} events not logged: {missing}"
