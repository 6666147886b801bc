"""Idle culling through the whole started stack, with limits of seconds (issue 13): a tab left
open that only answers pings and polls is culled; a kernel running code past the idle limit
keeps its session; a session past its maximum age is stopped however busy; after the culler is
killed (SIGKILL) and restarted, an idle session is still culled on time and active ones are not.

Each stop request is read back from the event log (`idle-detected`, with its time), so the
tests check when the culler decided, not only that a session went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus import Bus
from bindery.bus.eventlog import read
from bindery.events import IdleDetected, PodReady, StopReason
from tests.support.gitrepo import make_repo
from tests.support.kernel import execute, start_kernel
from tests.support.stack import Stack, build_path, launch

IDLE = 30.0
"""The idle limit for these tests: long enough that a culler restart (a few seconds on a loaded
machine) fits well inside it, so a restart that forgot activity would cull too early."""
SLOW = 15.0
"""How late past its limit a stop may be requested: a check every second, plus a loaded
machine's delays in asking the session and publishing."""


@pytest.fixture(scope="module")
def short_limits(stack: Stack) -> Iterator[None]:
    with stack.settings(
        "culler", BINDERY_IDLE_TIMEOUT=str(IDLE), BINDERY_MAX_AGE="3600", BINDERY_CHECK_INTERVAL="1"
    ):
        yield


@pytest.fixture(scope="module")
def repo_url(repos: Path) -> str:
    path = repos / "culled"
    make_repo(path, {"README.md": "culling e2e\n"})
    return f"file://{path}"


class Decisions:
    """pod-ready and idle-detected events as the event log records them, followed live."""

    def __init__(self) -> None:
        self.ready: dict[str, PodReady] = {}
        self.stops: dict[str, IdleDetected] = {}
        self._changed = asyncio.Event()

    async def follow(self, amqp_url: str, since: datetime) -> None:
        async for record in read(amqp_url, start=since, follow=True):
            event = record.event
            if isinstance(event, PodReady):
                self.ready[event.session] = event
            elif isinstance(event, IdleDetected):
                self.stops.setdefault(event.session, event)
            self._changed.set()

    async def stop_of(self, session: str, limit: float) -> IdleDetected:
        """The first stop requested for `session`, waiting for it at most `limit` seconds."""
        async with asyncio.timeout(limit):
            while session not in self.stops:
                self._changed.clear()
                await self._changed.wait()
        return self.stops[session]


@pytest.fixture
async def decisions(stack: Stack) -> AsyncIterator[Decisions]:
    found = Decisions()
    task = asyncio.create_task(
        found.follow(stack.env["BINDERY_AMQP_URL"], datetime.now(UTC) - timedelta(seconds=5))
    )
    try:
        yield found
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Session:
    """A ready session, reached through the gateway as a browser reaches it."""

    def __init__(self, http: aiohttp.ClientSession, ready: dict[str, Any]) -> None:
        self.http = http
        self.url: str = ready["url"]
        self.name = self.url.rstrip("/").rsplit("/", 1)[-1]
        self.auth = {"Authorization": f"token {ready['token']}"}
        self.token: str = ready["token"]
        self.launch_id: str = ready["launch_id"]

    async def kernel(self) -> str:
        return await start_kernel(self.http, self.url, self.token)

    def channels(self, kernel: str, heartbeat: float | None = None) -> Any:
        url = self.url.replace("http://", "ws://") + f"api/kernels/{kernel}/channels"
        return self.http.ws_connect(url, headers=self.auth, heartbeat=heartbeat)

    async def answers(self) -> bool:
        async with self.http.get(f"{self.url}api/status", headers=self.auth) as resp:
            return resp.status == 200


async def started(stack: Stack, http: aiohttp.ClientSession, repo_url: str) -> Session:
    events = await launch(http, stack.gateway, build_path(repo_url, "main"))
    assert events[-1]["phase"] == "ready", events[-1]
    return Session(http, events[-1])


async def open_tab(session: Session, kernel: str) -> None:
    """What a JupyterLab tab left open does by itself, until cancelled: it polls the REST API
    every second (JupyterLab: every 10 s) and holds the kernel's websocket open, which carries
    only pings (every second from this side, every 30 s from Jupyter's) and their pongs."""
    polled = ["api/kernels", "api/sessions", "api/terminals", "api/kernelspecs"]
    polled += ["api/contents?content=1", "api/me", "lab/api/settings"]
    async with session.channels(kernel, heartbeat=1.0) as ws:
        while True:
            for path in polled:
                async with session.http.get(session.url + path, headers=session.auth) as resp:
                    assert resp.status == 200, (path, resp.status)
            with contextlib.suppress(TimeoutError):
                await ws.receive(timeout=1.0)  # anything the kernel says; pongs are handled


async def run_code(session: Session, kernel: str, code: str) -> None:
    """Run `code` over the kernel's websocket until the kernel is idle again (the websocket
    stays open meanwhile, pinged by Jupyter as a tab's is)."""
    async with session.channels(kernel) as ws:
        outcome = await execute(ws, code)
    assert outcome.ended == "idle", outcome


async def keep_saving(session: Session) -> None:
    """A person editing a file, saved every two seconds: writes, seen only by the gateway (no
    kernel, no terminal for the session to report)."""
    for n in range(10**6):
        body = {"type": "file", "format": "text", "content": f"draft {n}\n"}
        async with session.http.put(
            f"{session.url}api/contents/notes.txt", headers=session.auth, json=body
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
        await asyncio.sleep(2)


@contextlib.asynccontextmanager
async def running(*coroutines: Any) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run what stands in for people and tabs beside the test; cancelled at the end."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def still_running(tasks: list[asyncio.Task[None]]) -> None:
    """A stand-in that failed (a request refused, a websocket closed) would prove nothing."""
    for task in tasks:
        assert not task.done(), task


async def stop(stack: Stack, *sessions: Session) -> None:
    """Ask the scheduler to stop sessions a test leaves behind, as the culler would."""
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "e2e-test", connect_timeout=10)
    await bus.connect()
    try:
        for session in sessions:
            await bus.publish(
                IdleDetected(
                    launch_id=session.launch_id, session=session.name, reason=StopReason.IDLE
                )
            )
    finally:
        await bus.close()


def since(event: IdleDetected, moment: float) -> float:
    """Seconds from `moment` (time.time()) to when the culler requested the stop."""
    return event.time.timestamp() - moment


async def test_a_tab_that_only_pings_is_culled_and_a_kernel_running_code_is_not(
    stack: Stack,
    http: aiohttp.ClientSession,
    repo_url: str,
    short_limits: None,
    decisions: Decisions,
) -> None:
    left_open, computing = [await started(stack, http, repo_url) for _ in range(2)]
    computing_kernel = await computing.kernel()
    left_kernel_at = time.time()
    left_kernel = await left_open.kernel()  # the last thing a person did in that session
    async with running(
        open_tab(left_open, left_kernel),
        open_tab(computing, computing_kernel),
        run_code(computing, computing_kernel, f"import time; time.sleep({2.5 * IDLE})"),
    ) as (_, computing_tab, run):
        culled = await decisions.stop_of(left_open.name, IDLE + SLOW + 30)
        assert culled.reason is StopReason.IDLE
        assert IDLE <= since(culled, left_kernel_at) <= IDLE + SLOW
        async with asyncio.timeout(2.5 * IDLE + 60):
            await run
        ran_until = time.time()
        assert computing.name not in decisions.stops, "culled while its kernel ran"
        still_running([computing_tab])
        # Once the code has finished and only the tab's pings remain, it is idle too.
        culled = await decisions.stop_of(computing.name, IDLE + SLOW + 30)
        assert IDLE - 2 <= since(culled, ran_until) <= IDLE + SLOW


async def test_a_session_past_its_maximum_age_is_stopped_however_busy(
    stack: Stack, http: aiohttp.ClientSession, repo_url: str, decisions: Decisions
) -> None:
    max_age = 20.0
    with stack.settings(
        "culler",
        BINDERY_IDLE_TIMEOUT="600",
        BINDERY_MAX_AGE=str(max_age),
        BINDERY_CHECK_INTERVAL="1",
    ):
        old = await started(stack, http, repo_url)
        kernel = await old.kernel()
        sleep = run_code(old, kernel, "import time; time.sleep(600)")
        async with running(open_tab(old, kernel), sleep) as people:
            await asyncio.sleep(max_age / 2)
            still_running(people)
            stopped = await decisions.stop_of(old.name, max_age + SLOW + 30)
        assert stopped.reason is StopReason.MAX_AGE
        age = (stopped.time - decisions.ready[old.name].time).total_seconds()
        assert max_age <= age <= max_age + SLOW


async def test_after_a_culler_kill_idle_sessions_are_culled_on_time_and_active_ones_kept(
    stack: Stack,
    http: aiohttp.ClientSession,
    repo_url: str,
    short_limits: None,
    decisions: Decisions,
) -> None:
    """Activity from before the kill comes back from the event log (the saving session: only
    the gateway saw it) and from the sessions themselves (the computing one), not from the
    sessions' start times; the restart does not give the idle one a fresh idle period either."""
    idle, saving, computing = [await started(stack, http, repo_url) for _ in range(3)]
    computing_kernel = await computing.kernel()
    idle_kernel_at = time.time()
    idle_kernel = await idle.kernel()
    async with running(
        open_tab(idle, idle_kernel),
        keep_saving(saving),
        run_code(computing, computing_kernel, "import time; time.sleep(600)"),
    ) as people:
        await asyncio.sleep(IDLE / 2)
        victim = stack.processes.pop("culler")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        await asyncio.to_thread(stack.start, "culler")
        restarted_at = time.time()
        assert restarted_at < idle_kernel_at + IDLE, "the restart took the whole idle period"

        culled = await decisions.stop_of(idle.name, IDLE + SLOW + 30)
        assert culled.reason is StopReason.IDLE
        assert IDLE <= since(culled, idle_kernel_at) <= IDLE + SLOW
        # Past a whole idle period after the restart, the active sessions are still there.
        await asyncio.sleep(max(0.0, restarted_at + IDLE + 5 - time.time()))
        assert saving.name not in decisions.stops and computing.name not in decisions.stops
        still_running(people[1:])
        assert await saving.answers() and await computing.answers()
    await stop(stack, saving, computing)
