"""The end-to-end and security tests share one started stack (real broker, registry, podman,
repo2docker), started when the first test asking for it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.localhost import client_session
from tests.support.sandbox import readable_dir
from tests.support.stack import LOG_DIR, Stack, started_stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    yield from started_stack(LOG_DIR)


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with client_session(timeout=aiohttp.ClientTimeout(total=600)) as session:
        yield session


@pytest.fixture(scope="session")
def repos() -> Iterator[Path]:
    """Where tests make the repositories they launch: readable by the unprivileged resolver."""
    with readable_dir("bindery-test-repos-") as path:
        yield path
