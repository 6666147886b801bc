"""The `harness` fixture: a gateway with a fake bus, served by aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.gateway.fakes import Harness, make_harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async for h in make_harness():
        yield h
