"""Every test's tier, and the stack the end-to-end and security tests share.

In: the collected tests. Out: each marked with its tier (the folder it lives in: unit, integration,
security, e2e, compose) and that tier's timeout, so `-m unit` runs one tier and a hung test fails
within its tier's bound; and one started stack (real broker, registry, podman, repo2docker),
started when the first test asking for it runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.localhost import client_session
from tests.support.sandbox import readable_dir
from tests.support.stack import LOG_DIR, Stack, started_stack

TESTS = Path(__file__).parent

#: Upper bounds per test, not durations: a unit test touches nothing real; an integration test may
#: build an image; an end-to-end or security test may build, launch and cull through the whole stack
#: on a loaded 2-core machine; compose builds its images and the builder's base image first.
TIER_TIMEOUTS = {"unit": 60, "integration": 600, "security": 900, "e2e": 900, "compose": 2400}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier not in TIER_TIMEOUTS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test lives in one of {sorted(TIER_TIMEOUTS)}"
            )
        item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUTS[tier]))


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
