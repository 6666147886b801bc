"""The gateway's background loops on the shared runner (bindery.gateway.app.loops): the routes of
sessions that outlived a restart are rebuilt from the first step on, retried while the runtime
fails; a loop the runner finds failing makes the gateway's /health answer 503 naming it."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from bindery.gateway.app import create_app, loops
from bindery.gateway.deps import Gateway
from bindery.runtimes import Session
from bindery.service import Loops
from tests.support.fakebus import FakeBus
from tests.unit.gateway.fakes import listed_session, settings

LIMIT = 10.0


class FlakyRuntime:
    """Lists one running session, after failing `failures` times (a node still starting)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def list_sessions(self) -> list[Session]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("node not up yet")
        return [listed_session("survivor")]


async def test_routes_are_rebuilt_at_start_retrying_while_the_runtime_fails() -> None:
    runtime = FlakyRuntime(failures=2)
    gateway = Gateway.create(
        settings(routes_retry_interval=0.01, activity_flush_interval=3600), FakeBus(), runtime
    )
    assert not gateway.routes.rebuilt.is_set()
    supervised = Loops("gateway")
    supervised.start(loops(gateway))
    try:
        async with asyncio.timeout(LIMIT):
            await gateway.routes.rebuilt.wait()
    finally:
        await supervised.stop()
    assert "survivor" in gateway.routes
    assert runtime.calls == 3


def test_without_a_runtime_there_are_no_routes_to_rebuild() -> None:
    gateway = Gateway.create(settings(), FakeBus())
    assert gateway.routes.rebuilt.is_set()
    assert [loop.name for loop in loops(gateway)] == ["activity"]


async def test_health_fails_naming_a_failing_loop() -> None:
    failing = {"routes": "failed 3 times in a row, last: ConnectionError: node not up yet"}
    found: dict[str, str] = {}

    async def registry_check() -> bool:
        return True

    gateway = Gateway.create(
        settings(), FakeBus(), registry_check=registry_check, failing_loops=lambda: found
    )
    async with TestClient(TestServer(create_app(gateway))) as client:
        resp = await client.get("/health")
        assert resp.status == 200 and "failing_loops" not in await resp.json()
        found.update(failing)
        resp = await client.get("/health")
        body = await resp.json()
        assert resp.status == 503
        assert (body["ok"], body["failing_loops"]) == (False, failing)
