"""Runs one service process: logging, tracing, the bus, health and metrics endpoints, its
background loops, its resources, and a clean stop on SIGTERM.

In: the service name, its settings, a `start` coroutine that gets a `Starter` (the connected
bus, and the stack the service opens its resources on: runtimes, HTTP clients, servers), subscribes
handlers and returns the service's background loops (`Loop`: a step to repeat every interval), if
any. Out: a process that serves `/health` and `/metrics` on its health port (a service with a web
app of its own, the gateway, serves them there) until stopped. The runner supervises the loops: a
step that raises is logged, counted (`bindery_loop_errors_total`) and tried again at the next
interval, so one bad round never ends a loop; a loop that keeps failing or has ended makes
`/health` answer 503 naming it.

On stop, in this order: the loops are cancelled, awaited and closed; the bus is closed, which
cancels the handlers still working on a delivery (unacknowledged, the broker gives it to another
replica or to this service restarted); only then are the resources closed. Closing resources
while the bus still delivers would let a handler run on a closed runtime or client: its error
would dead-letter an event that a restart would have handled (a scheduler being restarted
dead-lettered an idle-detected that way).

A service whose state must be one process's (`one_active`) runs one active replica at a time:
each replica connects and serves `/health` (200, `"role": "standby"`), and only the one holding
the service's lock (bindery.bus.leadership) starts: subscribes, rebuilds its state and runs its
loops. Its lock is released last, after the bus, so no standby takes over while it still
handles a delivery. A replica that loses the lock to another stops and exits with status 1, for
its supervisor to start it again as a standby.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from bindery import logs, metrics, telemetry
from bindery.bus import Bus
from bindery.bus.leadership import Leadership
from bindery.settings import CommonSettings

log = structlog.get_logger("bindery.service")


@dataclass(frozen=True)
class Loop:
    """A background job of a service: `step` every `interval` seconds while the service runs.
    The step bounds its own time (its requests' timeouts): the runner only sees how it ends."""

    name: str
    step: Callable[[], Awaitable[object]]
    interval: float
    unhealthy_after: int = 3
    """Failed steps in a row after which `/health` fails: one failure may be a passing outage
    (a publish that timed out), this many say the loop cannot do its job."""
    close: Callable[[], Awaitable[object]] | None = None
    """Ends what only the loop's steps hold (a stream they follow, a server they keep), once
    the loop has stopped and before the bus closes; shared resources go on `Starter.resources`."""
    at_start: bool = False
    """Whether the first step runs as soon as the service has started, rather than one
    interval later (a job the service owes at start: routes to rebuild, a disk to prune)."""


@dataclass
class _Supervised:
    loop: Loop
    task: asyncio.Task[None] = field(init=False)
    failures_in_a_row: int = 0
    last_error: str = ""


class Loops:
    """A service's background loops, each in a task of its own, supervised."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._supervised: dict[str, _Supervised] = {}

    def start(self, loops: Iterable[Loop]) -> None:
        loops = list(loops)
        names = [loop.name for loop in loops] + list(self._supervised)
        if len(set(names)) < len(names):
            raise ValueError(f"two loops share a name: {sorted(names)}")
        for loop in loops:
            state = self._supervised[loop.name] = _Supervised(loop)
            state.task = asyncio.create_task(self._repeat(state), name=f"loop:{loop.name}")
            state.task.add_done_callback(self._ended)

    async def _repeat(self, state: _Supervised) -> None:
        loop = state.loop
        errors = metrics.LOOP_ERRORS.labels(self._service, loop.name)
        wait = 0 if loop.at_start else loop.interval
        while True:
            await asyncio.sleep(wait)
            wait = loop.interval
            try:
                await loop.step()
            except Exception as exc:
                state.failures_in_a_row += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                errors.inc()
                log.exception(
                    "loop.failed", loop=loop.name, failures_in_a_row=state.failures_in_a_row
                )
            else:
                if state.failures_in_a_row:
                    log.info(
                        "loop.recovered", loop=loop.name, after_failures=state.failures_in_a_row
                    )
                state.failures_in_a_row = 0

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Only cancellation (the stop) or an exception that is not an Exception ends a loop.
        if not task.cancelled():
            log.error("loop.ended", loop=task.get_name(), error=repr(task.exception()))

    def unhealthy(self) -> dict[str, str]:
        """Each loop that fails the service's health, with why."""
        found = {}
        for name, state in self._supervised.items():
            if state.task.done():
                found[name] = "stopped"
            elif state.failures_in_a_row >= state.loop.unhealthy_after:
                found[name] = (
                    f"failed {state.failures_in_a_row} times in a row, last: {state.last_error}"
                )
        return found

    async def stop(self) -> None:
        tasks = [state.task for state in self._supervised.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._supervised.values():
            if state.loop.close is not None:
                await state.loop.close()


@dataclass(frozen=True)
class Starter:
    """What a service's start is given."""

    bus: Bus
    """Connected; closed by the runner after the loops, before the resources."""
    resources: AsyncExitStack
    """Where the service opens what it must close (runtimes, HTTP clients, servers): the runner
    closes them, last opened first, once the bus is closed."""
    loops: Loops
    """The supervised loops, for a service that answers `/health` itself (`Loops.unhealthy`)."""


Start = Callable[[Starter], Awaitable[Iterable[Loop] | None]]


async def run_until_stopped(service: str, bus: Bus, start: Start, stop: asyncio.Event) -> None:
    """Start the service on its connected bus, run its loops until `stop` is set, then stop
    it in the order the module docstring gives: loops, bus, resources. A start that fails is
    undone the same way (what it opened so far is closed)."""
    loops = Loops(service)
    async with AsyncExitStack() as resources:
        try:
            loops.start(await start(Starter(bus, resources, loops)) or ())
            log.info("service.started")
            await stop.wait()
            log.info("service.stopping")
        finally:
            await loops.stop()
            await bus.close()


def health_route(
    service: str,
    broker_connected: Callable[[], bool],
    loops: Loops,
    role: Callable[[], str] = lambda: "active",
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`/health`: 200 while the broker is connected and every loop works, else 503 saying which
    part is not; `role` says whether this replica is the active one or a standby."""

    async def health(_request: web.Request) -> web.Response:
        broker = broker_connected()
        failing = loops.unhealthy()
        body: dict[str, object] = {"service": service, "broker": broker, "role": role()}
        if failing:
            body["failing_loops"] = failing
        return web.json_response(body, status=200 if broker and not failing else 503)

    return health


def make_bus(settings: CommonSettings, service: str) -> Bus:
    """A service's bus. Services connect as their own broker user (bindery.bus.access), which
    may not configure the shared topology: whoever set the virtual host up declared it, so the
    event log's retention is that setup's setting, not the service's."""
    return Bus(
        settings.amqp_url,
        service,
        publish_retry_for=settings.publish_retry_seconds,
        declare_topology=False,
    )


async def serve(
    service: str,
    settings: CommonSettings,
    health_port: int | None,
    start: Start,
    *,
    one_active: bool = False,
) -> int:
    """Run `service` until SIGTERM or SIGINT (returns 0) or, `one_active`, until another replica
    took its lock (returns 1). `health_port` None: the service's own web app answers `/health`
    and `/metrics`, with `Starter.loops` (the gateway)."""
    logs.configure(service, settings.log_format, settings.log_level)
    telemetry.configure(service, settings)
    bus = make_bus(settings, service)
    await bus.connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    leadership = Leadership(settings.amqp_url, service) if one_active else None
    active = leadership is None
    lost = asyncio.Event()

    async def hold(leadership: Leadership) -> None:
        await leadership.keep()
        log.error("service.lock_lost", detail="another replica is the active one now")
        lost.set()
        stop.set()

    async def start_with_health(starter: Starter) -> Iterable[Loop] | None:
        nonlocal active
        if health_port is not None:
            app = web.Application()
            app.router.add_get(
                "/health",
                health_route(
                    service,
                    lambda: bus.connected,
                    starter.loops,
                    lambda: "active" if active else "standby",
                ),
            )
            app.router.add_get("/metrics", metrics.route(lambda: refresh_queue_depths(bus)))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            starter.resources.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, settings.health_host, health_port).start()
            log.info("service.health_serving", health_port=health_port)
        if leadership is not None:
            starter.resources.push_async_callback(leadership.release)
            if not await until_active(leadership, stop):
                return None
            holding = asyncio.create_task(hold(leadership))
            starter.resources.callback(holding.cancel)
        loops = await start(starter)
        active = True  # subscribed and its state rebuilt: what /health's "active" promises
        return loops

    try:
        await run_until_stopped(service, bus, start_with_health, stop)
    finally:
        telemetry.shutdown()
    return 1 if lost.is_set() else 0


async def until_active(leadership: Leadership, stop: asyncio.Event) -> bool:
    """Wait as a standby until this replica holds the lock (True) or is stopped (False)."""
    acquiring = asyncio.create_task(leadership.acquire())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not acquiring.done():
        acquiring.cancel()
        return False
    acquiring.result()
    return True


async def refresh_queue_depths(bus: Bus) -> None:
    """Ask the broker how many messages wait in each queue this service consumes; a broker
    that does not answer leaves the last values rather than failing the scrape."""
    try:
        depths = await bus.queue_depths()
    except Exception as exc:
        log.warning("metrics.queue_depth_failed", error=str(exc))
        return
    for queue, depth in depths.items():
        metrics.QUEUE_DEPTH.labels(queue).set(depth)


def run(
    service: str,
    settings: CommonSettings,
    health_port: int | None,
    start: Start,
    event_loop: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run,
    *,
    one_active: bool = False,
) -> None:
    """`event_loop` runs the service's coroutine (the gateway's: uvloop where installed); the
    process exits with what `serve` returns."""
    sys.exit(event_loop(serve(service, settings, health_port, start, one_active=one_active)))
