"""Integration tests use the real RabbitMQ (in a virtual host of their own) and real git."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest

from bindery.bus import Bus
from tests.support.stack import REPO, SLOT

VHOST = f"bindery-integration-{SLOT}"
AMQP_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    infra = str(REPO / "scripts/infra.sh")
    subprocess.run([infra, "vhost-delete", VHOST], check=True, capture_output=True)
    subprocess.run([infra, "vhost", VHOST], check=True, capture_output=True)
    return AMQP_URL


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "integration-test", connect_timeout=10)
    await bus.connect()
    yield bus
    await bus.close()
