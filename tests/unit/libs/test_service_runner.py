"""The service runner's start and stop (bindery.service.run_until_stopped): a service's start
gets the bus and a stack for its resources, its loops run supervised, and the stop ends the
loops, then the bus (whose close cancels the handlers still working), then the resources, so no
handler ever meets a closed resource. A start that fails is undone the same way."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from bindery.bus import Bus
from bindery.service import Loop, Starter, run_until_stopped

LIMIT = 10.0


class FakeBus:
    """Stands in for the bus: its close cancels the handler it is running, as `Bus.close`
    cancels the handlers of unacknowledged deliveries."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.handling: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.handling is not None:
            self.handling.cancel()
            await asyncio.gather(self.handling, return_exceptions=True)
        self.order.append("bus closed")


class Runtime:
    """A resource that records its close, and whether anything used it once closed."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.closed = False
        self.used_closed = False

    async def stop_session(self) -> None:
        self.used_closed = self.used_closed or self.closed

    async def close(self) -> None:
        self.closed = True
        self.order.append("runtime closed")


async def test_stop_ends_loops_then_the_bus_then_the_resources_last_opened_first() -> None:
    order: list[str] = []
    bus = FakeBus(order)
    runtime = Runtime(order)
    stop = asyncio.Event()
    stepped = asyncio.Event()
    handler_waits = asyncio.Event()

    async def handler() -> None:
        # A delivery in hand when the stop comes (an idle-detected for the scheduler): it
        # uses the runtime once it goes on, unless the bus's close cancelled it first.
        await handler_waits.wait()
        await runtime.stop_session()

    async def step() -> None:
        stepped.set()

    async def loop_closed() -> None:
        order.append("loop closed")
        handler_waits.set()  # the handler would now go on: only the bus's close stops it

    async def start(starter: Starter) -> list[Loop]:
        assert starter.bus is cast(Bus, bus)
        starter.resources.push_async_callback(runtime.close)

        async def http_closed() -> None:
            order.append("http client closed")

        starter.resources.push_async_callback(http_closed)
        bus.handling = asyncio.create_task(handler())
        return [Loop("check", step, 0.01, close=loop_closed)]

    running = asyncio.create_task(run_until_stopped("s", cast(Bus, bus), start, stop))
    async with asyncio.timeout(LIMIT):
        await stepped.wait()
    stop.set()
    async with asyncio.timeout(LIMIT):
        await running
    assert order == ["loop closed", "bus closed", "http client closed", "runtime closed"]
    assert not runtime.used_closed


async def test_a_failed_start_closes_the_bus_and_what_it_opened() -> None:
    order: list[str] = []
    bus = FakeBus(order)
    runtime = Runtime(order)

    async def start(starter: Starter) -> None:
        starter.resources.push_async_callback(runtime.close)
        raise ConnectionError("no node answers")

    with pytest.raises(ConnectionError):
        async with asyncio.timeout(LIMIT):
            await run_until_stopped("s", cast(Bus, bus), start, asyncio.Event())
    assert order == ["bus closed", "runtime closed"]


async def test_the_loops_a_start_returns_are_supervised_and_reported() -> None:
    stop = asyncio.Event()
    failed = asyncio.Event()
    seen: dict[str, str] = {}

    async def broken() -> None:
        failed.set()
        raise ConnectionError("broker gone")

    async def start(starter: Starter) -> list[Loop]:
        async def report() -> None:
            if starter.loops.unhealthy():
                seen.update(starter.loops.unhealthy())
                stop.set()

        return [Loop("broken", broken, 0.01, unhealthy_after=1), Loop("report", report, 0.01)]

    async with asyncio.timeout(LIMIT):
        await run_until_stopped("s", cast(Bus, FakeBus([])), start, stop)
    assert failed.is_set()
    assert list(seen) == ["broken"] and "broker gone" in seen["broken"]
