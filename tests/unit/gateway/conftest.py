"""The `harness` fixture: a gateway with a fake bus, served by aiohttp's test server; in modules
that set `BOTH_LANES = True`, each test runs twice: once so, once as the gateway serves
connections (fastlane.py first), so both lanes answer alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.gateway.fakes import Harness, make_harness


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lane" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_LANES", False):
        metafunc.parametrize("lane", ["aiohttp", "fast"])


@pytest.fixture
def lane() -> str:
    return "aiohttp"


@pytest.fixture
async def harness(lane: str) -> AsyncIterator[Harness]:
    async for h in make_harness(lane):
        yield h
