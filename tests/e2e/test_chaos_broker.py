"""RabbitMQ restarted mid-launch (issue 14): every launch ends once, ready or failed with a
reason the page shows, and the event log and the archive agree.

The stack runs on a RabbitMQ node of the test's own (tests/support/privatebroker.py), in a slot
of its own (its ports, virtual host and podman label), so restarting the broker touches neither
the shared one nor the stack the other e2e tests use. Each case follows a launch's /build
stream as a browser does and restarts the broker (stop, then start on the same state) when the
launch reaches its moment: just after it was requested, mid-build (its postBuild says so), and
while its session starts; or requests the launch while the broker is down and starts it once
the page shows `waiting`; or restarts it with the gateway stopped until the launch has ended
elsewhere. The matrix is printed at the end (`-s` shows it).
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus.eventlog import NoEventLog, read
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.localhost import client_session
from tests.support.privatebroker import PrivateBroker
from tests.support.stack import (
    LOG_DIR,
    SLOT,
    Slot,
    Stack,
    build_path,
    launch_events,
    running_sessions,
    started_stack,
)

pytestmark = pytest.mark.chaos

#: Past the slots test runs use, so this stack's ports, vhost and podman label are its own.
CHAOS_SLOT = Slot(SLOT + 50)
MID_BUILD = "restart-the-broker-now"
#: Upper bound on a launch through a restart (about 15 s) and a build of a few seconds.
LAUNCH_LIMIT = 300
TERMINAL_EVENTS = {"pod-ready", "launch-failed", "launch-abandoned"}
#: Steps a launch takes once: a redelivery after the restart must not redo them.
ONCE = {"launch-requested", "ref-resolved", "build-started", "image-built", "pod-scheduled"}

Moment = Callable[[dict[str, Any]], bool]
#: What is done to the broker at the moment, given the event that made it come.
Fault = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    directory = Path(tempfile.mkdtemp(prefix="bindery-chaos-broker-"))
    broker = PrivateBroker(directory, CHAOS_SLOT.number)
    broker.start()
    try:
        yield broker
    finally:
        broker.remove()


@pytest.fixture(scope="module")
def chaos_stack(broker: PrivateBroker) -> Iterator[Stack]:
    yield from started_stack(LOG_DIR.parent / "chaos", CHAOS_SLOT, broker)


@pytest.fixture(scope="module")
async def chaos_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with client_session(timeout=aiohttp.ClientTimeout(total=LAUNCH_LIMIT)) as session:
        yield session


@pytest.fixture(scope="module")
def slow_repo(repos: Path) -> Path:
    """Builds for about ten seconds after saying so: the broker restarts in the middle."""
    path = repos / "chaos-broker"
    make_repo(
        path,
        {"postBuild": f"#!/bin/bash\necho {MID_BUILD}\nsleep 10\necho built-after-restart\n"},
    )
    return path


MATRIX: list[tuple[str, str]] = []


@pytest.fixture(scope="module", autouse=True)
def matrix() -> Iterator[None]:
    yield
    print("\nbroker faults / how each launch ended (once, the log and archive agreeing):")
    for fault, end in MATRIX:
        print(f"  {fault:32} -> {end}")


async def launch_with_a_fault(
    stack: Stack, http: aiohttp.ClientSession, path: str, moment: Moment, fault: Fault
) -> list[dict[str, Any]]:
    """The launch's events as a browser sees them, `fault` done to the broker (in a thread: the
    stream keeps being read meanwhile) at the first event `moment` picks."""
    events: list[dict[str, Any]] = []
    done: asyncio.Future[None] | None = None
    try:
        async with asyncio.timeout(LAUNCH_LIMIT):
            async for event in launch_events(http, stack.gateway, path):
                events.append(event)
                if done is None and moment(event):
                    done = asyncio.ensure_future(asyncio.to_thread(fault, event))
    except TimeoutError:
        raise AssertionError(f"the launch hung: {hang_report(stack, events)}") from None
    assert done is not None, f"the moment never came: {events}"
    await done
    return events


def hang_report(stack: Stack, events: list[dict[str, Any]]) -> str:
    """What the page saw, and every service's log lines about the launch and the bus: where a
    launch that never ended stopped."""
    launch_id = next((e["launch_id"] for e in events if e.get("launch_id")), "")
    lines = [f"events: {[(e.get('phase'), e.get('message', '')[:60]) for e in events]}"]
    for service in stack.processes:
        path = stack.log_dir / f"{service}.log"
        logged = path.read_text(errors="replace").splitlines()[-400:]
        wanted = [
            line[:300]
            for line in logged
            if (launch_id and launch_id in line)
            or any(word in line for word in ('"bus.', '"leadership.', '"service.', "recover"))
        ]
        lines.append(f"--- {service} (exit {stack.processes[service].poll()}):")
        lines.extend(wanted[-25:])
    return "\n".join(lines)


async def check_the_end(stack: Stack, fault: str, events: list[dict[str, Any]]) -> None:
    """One end, shown to the page with a reason if it failed, in the event log and the archive
    alike; a ready launch has its session running."""
    terminal = [e for e in events if e.get("phase") in ("ready", "failed")]
    ended = events[-1]
    MATRIX.append((fault, f"{ended['phase']} {ended.get('reason', '')}".strip()))
    assert len(terminal) == 1, terminal
    if ended["phase"] == "failed":
        assert ended.get("reason") and ended.get("message"), ended
    launch_id = ended["launch_id"]

    async def distinct() -> dict[str, str]:
        # Distinct events (a publisher's retry may repeat one under the same id: consumers
        # drop it).
        return {
            r.event.event_id: r.event.type
            async for r in read(stack.env["BINDERY_AMQP_URL"], launch_id=launch_id)
        }

    # The launch may have ended before the broker came back: its restarted stream can refuse
    # reads for a moment ("home node ... is down or inaccessible").
    logged = list(
        (await eventually(distinct, ignoring=(NoEventLog,), what="the event log read")).values()
    )
    assert [t for t in logged if t in TERMINAL_EVENTS] == [
        "pod-ready" if ended["phase"] == "ready" else "launch-failed"
    ], logged
    repeated = {t for t in logged if t in ONCE and logged.count(t) > 1}
    assert not repeated, f"steps done twice: {logged}"
    record = await archived(stack, launch_id)
    assert record["outcome"] == ("ready" if ended["phase"] == "ready" else "failed"), record
    if ended["phase"] == "ready":
        assert running_sessions(stack.slot.instance), "the ready session runs"


async def archived(stack: Stack, launch_id: str, limit: float = 30.0) -> dict[str, Any]:
    """The launch's one archive line (written just after its end reached the archiver)."""
    found = await eventually(
        lambda: stack.archived(launch_id),
        within=limit,
        every=0.2,
        what=f"launch {launch_id} archived",
    )
    assert len(found) == 1, found
    return found[0]


def restart_while_the_gateway_sleeps(stack: Stack, broker: PrivateBroker) -> Fault:
    """Restart the broker with the gateway stopped (SIGSTOP) until its launch has ended
    elsewhere (archived): the other services reconnect and finish the launch while the
    gateway's exclusive queue is gone, so only the event log can tell the gateway."""

    def fault(event: dict[str, Any]) -> None:
        gateway = stack.processes["gateway"]
        gateway.send_signal(signal.SIGSTOP)
        try:
            broker.restart()
            deadline = time.monotonic() + LAUNCH_LIMIT
            while not stack.archived(event["launch_id"]):
                assert time.monotonic() < deadline, "the launch did not end without the gateway"
                time.sleep(0.2)
        finally:
            gateway.send_signal(signal.SIGCONT)

    return fault


def restart(broker: PrivateBroker) -> Fault:
    return lambda _event: broker.restart()


def said(text: str) -> Moment:
    return lambda event: text in str(event.get("message", ""))


def phase(name: str) -> Moment:
    return lambda event: event.get("phase") == name


async def test_a_broker_restart_mid_build_ends_the_launch_once(
    chaos_stack: Stack, chaos_http: aiohttp.ClientSession, broker: PrivateBroker, slow_repo: Path
) -> None:
    path = build_path(f"file://{slow_repo}", "main")
    events = await launch_with_a_fault(
        chaos_stack, chaos_http, path, said(MID_BUILD), restart(broker)
    )
    await check_the_end(chaos_stack, "restart mid-build", events)
    assert events[-1]["phase"] == "ready", events[-5:]


async def test_a_broker_restart_while_the_session_starts_ends_the_launch_once(
    chaos_stack: Stack, chaos_http: aiohttp.ClientSession, broker: PrivateBroker, slow_repo: Path
) -> None:
    # The image exists now (the case above built it): straight to the scheduler.
    path = build_path(f"file://{slow_repo}", "main")
    events = await launch_with_a_fault(
        chaos_stack, chaos_http, path, phase("launching"), restart(broker)
    )
    await check_the_end(chaos_stack, "restart mid-start", events)
    assert events[-1]["phase"] == "ready", events[-5:]


async def test_a_broker_restart_before_resolve_ends_the_launch_once(
    chaos_stack: Stack, chaos_http: aiohttp.ClientSession, broker: PrivateBroker, slow_repo: Path
) -> None:
    path = build_path(f"file://{slow_repo}", "main")
    events = await launch_with_a_fault(
        chaos_stack, chaos_http, path, phase("waiting"), restart(broker)
    )
    await check_the_end(chaos_stack, "restart before resolve", events)
    assert events[-1]["phase"] == "ready", events[-5:]


async def test_a_launch_requested_while_the_broker_is_down_goes_on_once_it_is_back(
    chaos_stack: Stack, chaos_http: aiohttp.ClientSession, broker: PrivateBroker, slow_repo: Path
) -> None:
    await asyncio.to_thread(broker.stop)
    path = build_path(f"file://{slow_repo}", "main")
    # The page shows `waiting` while the broker is down; then it starts.
    events = await launch_with_a_fault(
        chaos_stack, chaos_http, path, phase("waiting"), lambda _event: broker.start()
    )
    await check_the_end(chaos_stack, "broker down at the request", events)
    assert events[-1]["phase"] == "ready", events[-5:]


async def test_a_gateway_that_reconnects_last_reads_what_it_missed_from_the_event_log(
    chaos_stack: Stack, chaos_http: aiohttp.ClientSession, broker: PrivateBroker, slow_repo: Path
) -> None:
    path = build_path(f"file://{slow_repo}", "main")
    fault = restart_while_the_gateway_sleeps(chaos_stack, broker)
    events = await launch_with_a_fault(chaos_stack, chaos_http, path, phase("built"), fault)
    await check_the_end(chaos_stack, "restart, gateway reconnects last", events)
    assert events[-1]["phase"] == "ready", events[-5:]
