"""Integration tests use the real RabbitMQ (in a virtual host of their own) and real git."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bindery.bus import Bus
from tests.support.stack import SLOT, own_vhost

VHOST = f"bindery-integration-{SLOT}"


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    with own_vhost(VHOST) as url:
        yield url


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "integration-test", connect_timeout=10)
    await bus.connect()
    yield bus
    await bus.close()
