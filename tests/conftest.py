"""The end-to-end and security tests share one started stack (real broker, registry, podman,
repo2docker), started when the first test asking for it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.stack import LOG_DIR, Stack, started_stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    yield from started_stack(LOG_DIR)


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        yield session


@pytest.fixture(scope="session")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repos")
