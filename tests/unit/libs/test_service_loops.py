"""Background loops supervised by the service runner (bindery.service): a failing step is
logged, counted and retried; `/health` fails, naming the loop, once it keeps failing or has
ended, and recovers with it; stopping cancels, awaits and closes the loops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from bindery.service import Loop, Loops, health_route
from tests.support.eventually import eventually

INTERVAL = 0.01


class Fatal(BaseException):
    """Not an `Exception`: nothing a step should raise, so it ends the loop."""


class Flaky:
    """A step that fails while `failing` is set, and counts its calls."""

    def __init__(self) -> None:
        self.failing = False
        self.fatal = False
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.called.set()
        if self.fatal:
            raise Fatal
        if self.failing:
            raise ConnectionError("broker gone")


@pytest.fixture
async def supervised() -> AsyncIterator[
    tuple[Loops, Flaky, TestClient[web.Request, web.Application]]
]:
    loops = Loops("test-service")
    step = Flaky()
    loops.start([Loop("check", step, INTERVAL, unhealthy_after=3)])
    app = web.Application()
    app.router.add_get("/health", health_route("test-service", lambda: True, loops))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield loops, step, client
    finally:
        await client.close()
        await loops.stop()


async def until(condition: Callable[[], bool], step: Flaky, limit: float = 10.0) -> None:
    """Wait (bounded) until `condition` holds after some call of the step."""
    async with asyncio.timeout(limit):
        while not condition():
            step.called.clear()
            await step.called.wait()


async def more_calls(step: Flaky, count: int) -> None:
    """Wait (bounded) until the step has been called `count` more times."""
    target = step.calls + count
    await until(lambda: step.calls >= target, step)


def errors_counted() -> float:
    labels = {"service": "test-service", "loop": "check"}
    return REGISTRY.get_sample_value("bindery_loop_errors_total", labels) or 0.0


async def test_health_fails_naming_the_loop_after_failures_in_a_row_and_recovers(
    supervised: tuple[Loops, Flaky, TestClient[web.Request, web.Application]],
) -> None:
    loops, step, client = supervised
    assert (await client.get("/health")).status == 200
    counted = errors_counted()
    step.failing = True
    await until(lambda: step.calls >= 1 and "check" in loops.unhealthy(), step)
    assert errors_counted() >= counted + 3, "each failure is counted"
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert "broker gone" in body["failing_loops"]["check"]
    assert body["broker"] is True

    step.failing = False
    await more_calls(step, 2)  # the loop kept going, and succeeded
    assert (await client.get("/health")).status == 200


async def test_fewer_failures_in_a_row_than_the_limit_leave_health_alone(
    supervised: tuple[Loops, Flaky, TestClient[web.Request, web.Application]],
) -> None:
    loops, step, client = supervised
    for _ in range(5):
        step.failing = True
        await more_calls(step, 2)
        step.failing = False
        await more_calls(step, 1)
        assert loops.unhealthy() == {}
    assert (await client.get("/health")).status == 200


async def test_a_loop_that_ended_fails_health(
    supervised: tuple[Loops, Flaky, TestClient[web.Request, web.Application]],
) -> None:
    loops, step, client = supervised
    step.fatal = True
    await eventually(loops.unhealthy, within=10, every=INTERVAL, what="the ended loop unhealthy")
    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["failing_loops"] == {"check": "stopped"}


async def test_a_disconnected_broker_fails_health_too() -> None:
    app = web.Application()
    app.router.add_get("/health", health_route("s", lambda: False, Loops("s")))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/health")
        assert resp.status == 503
        assert await resp.json() == {"service": "s", "broker": False, "role": "active"}


async def test_a_standby_is_healthy_and_says_so() -> None:
    app = web.Application()
    app.router.add_get("/health", health_route("s", lambda: True, Loops("s"), lambda: "standby"))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/health")
        assert resp.status == 200
        assert (await resp.json())["role"] == "standby"


async def test_stop_cancels_awaits_and_closes_every_loop() -> None:
    closed: list[str] = []
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def long_step() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def close() -> None:
        closed.append("http client")

    loops = Loops("s")
    loops.start([Loop("long", long_step, INTERVAL, close=close), Loop("other", Flaky(), 3600)])
    async with asyncio.timeout(10):
        await started.wait()
    await loops.stop()
    assert cancelled.is_set()
    assert closed == ["http client"]


async def test_two_loops_may_not_share_a_name() -> None:
    loops = Loops("s")
    with pytest.raises(ValueError, match="two loops"):
        loops.start([Loop("a", Flaky(), 1), Loop("a", Flaky(), 1)])
    assert loops.unhealthy() == {}, "none of them started"


async def test_a_loop_at_start_steps_at_once_then_every_interval() -> None:
    step = Flaky()
    loops = Loops("s")
    loops.start([Loop("prune", step, 3600, at_start=True)])
    try:
        async with asyncio.timeout(10):
            await step.called.wait()
        assert step.calls == 1
    finally:
        await loops.stop()
