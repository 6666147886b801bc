"""Replicas benchmark (issue 14): launches per minute with one replica of each service against
two of each, and how long a launch takes when the active replica of the service serving it is
killed (SIGKILL) mid-launch, against the same launch undisturbed. Writes
bench/results/replicas.json.

- throughput: rounds of LAUNCHES launches of a built image, CONCURRENCY at a time, each session
  stopped once ready; rounds alternate between one replica of each service and two (a second
  resolver, builder, scheduler, culler, archiver and gateway, the launches spread over both
  gateways), so drift in the machine's load hits both alike. On two cores the point is no
  slowdown, not a speed-up: the scheduler, culler and archiver run one active replica anyway.
- recovery: with two of each, a launch whose resolver is killed as it waits, whose builder is
  killed mid-build (a new commit each time) and whose scheduler is killed as the session starts;
  and how long a killed scheduler's, culler's and archiver's standby takes to become active.

Run it alone (`make bench`): the machine's two cores are what is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from reporting import write_report

from bindery.bus import Bus
from bindery.events import IdleDetected, StopReason

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gitrepo import commit, make_repo
from tests.support.sandbox import readable_dir
from tests.support.stack import (
    LOG_DIR,
    Slot,
    Stack,
    build_path,
    launch,
    running_sessions,
    started_stack,
)

#: The line a build's log opens with (bindery.builder), naming the replica that runs it.
BUILD_LINE = re.compile(r"Build [0-9a-f]{20} on (?P<replica>\S+): its log stays at")
SLOT = Slot(int(os.environ.get("BENCH_SLOT", "40")))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
LAUNCHES = 8
CONCURRENCY = 4
SERVICES = ("resolver", "builder", "scheduler", "culler", "archiver", "gateway")
ONE_ACTIVE = ("scheduler", "culler", "archiver")
#: The second replicas' health ports (the gateway's: its own port), past the stack's.
SECOND_PORTS = {service: n for n, service in enumerate(SERVICES, start=12)}


class Seconds:
    """Second replicas of every service beside a started stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Unique on the machine: a builder removes the build cgroups of its own name's prefix
        # at start, so two replicas of one name (in other stacks) would kill each other's builds.
        self.builder_name = f"second-{stack.slot.number}"

    def port(self, service: str) -> int:
        return self.stack.slot.gateway_port + SECOND_PORTS[service]

    def start(self, *services: str) -> None:
        saved = dict(self.stack.env)
        try:
            self.stack.env["BINDERY_BUILDER_REPLICA"] = self.builder_name
            self.stack.env["BINDERY_PORT"] = str(self.port("gateway"))
            for service in services or SERVICES:
                self.processes[service] = self.stack.spawn(
                    service, self.port(service), f"{service}-second"
                )
        finally:
            self.stack.env.clear()
            self.stack.env.update(saved)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=30)
        self.processes.clear()


async def health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    try:
        async with http.get(url) as resp:
            return dict(await resp.json()) if resp.status == 200 else {}
    except aiohttp.ClientError:
        return {}


async def until_healthy(http: aiohttp.ClientSession, urls: list[str], role: str = "") -> float:
    """Seconds until every URL answers healthy (with `role`, if given)."""
    began = time.perf_counter()
    for url in urls:
        while not (said := await health(http, url)) or (role and said.get("role") != role):
            await asyncio.sleep(0.1)
    return time.perf_counter() - began


async def stop_session(bus: Bus, ready: dict[str, Any]) -> None:
    session = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
    await bus.publish(
        IdleDetected(launch_id=ready["launch_id"], session=session, reason=StopReason.IDLE)
    )


async def until_no_sessions(stack: Stack) -> None:
    while await asyncio.to_thread(running_sessions, stack.slot.instance):
        await asyncio.sleep(0.3)


async def one_launch(
    http: aiohttp.ClientSession, bus: Bus, gateway: str, path: str
) -> tuple[float, bool]:
    began = time.perf_counter()
    events = await launch(http, gateway, path)
    seconds = time.perf_counter() - began
    if events[-1]["phase"] == "ready":
        await stop_session(bus, events[-1])
    return seconds, events[-1]["phase"] == "ready"


async def throughput(
    http: aiohttp.ClientSession, bus: Bus, stack: Stack, gateways: list[str], path: str
) -> dict[str, Any]:
    """LAUNCHES launches, CONCURRENCY at a time, spread over `gateways`: launches per minute."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def limited(n: int) -> tuple[float, bool]:
        async with gate:
            return await one_launch(http, bus, gateways[n % len(gateways)], path)

    began = time.perf_counter()
    results = await asyncio.gather(*(limited(n) for n in range(LAUNCHES)))
    elapsed = time.perf_counter() - began
    await until_no_sessions(stack)
    return {
        "launches_per_minute": 60 * LAUNCHES / elapsed,
        "failed": sum(1 for _, ok in results if not ok),
        "launch_p50_s": statistics.median(seconds for seconds, _ in results),
    }


def building_replica(events: list[dict[str, Any]]) -> str:
    """The builder replica a launch's build runs on, as its log says."""
    for event in events:
        if match := BUILD_LINE.search(str(event.get("message", ""))):
            return match["replica"]
    raise AssertionError(f"no build line in {events}")


async def victim_of(
    http: aiohttp.ClientSession,
    seconds: Seconds,
    service: str,
    events: list[dict[str, Any]],
) -> bool:
    """Whether the replica of `service` doing the launch's work is the second one: the builder
    its log names, the active one of a one-active service, the stack's resolver."""
    if service == "builder":
        return building_replica(events) == seconds.builder_name
    if service in ONE_ACTIVE:
        url = f"http://127.0.0.1:{seconds.port(service)}/health"
        return (await health(http, url)).get("role") == "active"
    return False


async def kill(stack: Stack, seconds: Seconds, service: str, second: bool) -> None:
    process = seconds.processes.pop(service) if second else stack.processes.pop(service)
    process.kill()
    await asyncio.to_thread(process.wait)


async def restart(stack: Stack, seconds: Seconds, service: str, second: bool) -> None:
    """Start the killed replica again, as a supervisor would."""
    if second:
        seconds.start(service)
    else:
        await asyncio.to_thread(stack.start, service)


async def killed_launch(
    http: aiohttp.ClientSession,
    bus: Bus,
    stack: Stack,
    seconds: Seconds,
    path: str,
    service: str,
    moment: str,
) -> dict[str, Any]:
    """A launch whose replica of `service` doing its work is killed at its first event of
    phase `moment` ("build-line": the line naming the builder), and started again once the
    launch has ended."""
    began = time.perf_counter()
    events: list[dict[str, Any]] = []
    second: bool | None = None
    async with http.get(stack.gateway + path, headers={"Accept": "text/event-stream"}) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            events.append(event)
            now = (
                BUILD_LINE.search(str(event.get("message", "")))
                if moment == "build-line"
                else event.get("phase") == moment
            )
            if second is None and now:
                second = await victim_of(http, seconds, service, events)
                await kill(stack, seconds, service, second)
            if event.get("phase") in ("ready", "failed"):
                break
    took = time.perf_counter() - began
    ended = events[-1]
    if ended["phase"] == "ready":
        await stop_session(bus, ended)
    assert second is not None, f"the launch never reached {moment}"
    await restart(stack, seconds, service, second)
    await until_no_sessions(stack)
    return {
        "seconds": took,
        "ended": ended["phase"],
        "reason": ended.get("reason", ""),
        "killed_at": moment,
        "killed": "second" if second else "first",
    }


async def takeover(http: aiohttp.ClientSession, stack: Stack, seconds: Seconds) -> dict[str, float]:
    """Kill each one-active service's active replica: seconds until the other one is active."""
    took = {}
    for service in ONE_ACTIVE:
        second = await victim_of(http, seconds, service, [])
        survivor = (
            stack.health_url(service)
            if second
            else f"http://127.0.0.1:{seconds.port(service)}/health"
        )
        began = time.perf_counter()
        await kill(stack, seconds, service, second)
        while (await health(http, survivor)).get("role") != "active":
            await asyncio.sleep(0.05)
        took[service] = time.perf_counter() - began
        await restart(stack, seconds, service, second)
    return took


async def measure(stack: Stack, repo: Path) -> dict[str, Any]:
    path = build_path(f"file://{repo}", "main")
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "bench", connect_timeout=10)
    await bus.connect()
    seconds = Seconds(stack)
    one: list[dict[str, Any]] = []
    two: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http:
            built, ok = await one_launch(http, bus, stack.gateway, path)
            assert ok, "the first launch (with its build) failed"
            await until_no_sessions(stack)
            second_gateway = f"http://127.0.0.1:{seconds.port('gateway')}"
            second_health = [f"http://127.0.0.1:{seconds.port(s)}/health" for s in SERVICES]
            second_health[-1] = f"{second_gateway}/health"
            for _ in range(ROUNDS):
                one.append(await throughput(http, bus, stack, [stack.gateway], path))
                seconds.start()
                await until_healthy(http, second_health)
                two.append(
                    await throughput(http, bus, stack, [stack.gateway, second_gateway], path)
                )
                seconds.stop()

            seconds.start()
            await until_healthy(http, second_health)
            undisturbed, _ = await one_launch(http, bus, stack.gateway, path)
            await until_no_sessions(stack)
            recovery: dict[str, Any] = {"undisturbed_launch_s": undisturbed}
            for service, phase in (("resolver", "waiting"), ("scheduler", "launching")):
                recovery[service] = await killed_launch(
                    http, bus, stack, seconds, path, service, phase
                )
            commit(repo, {"postBuild": "#!/bin/bash\nsleep 5\n"}, "a build to kill")
            recovery["builder"] = await killed_launch(
                http, bus, stack, seconds, path, "builder", "build-line"
            )
            recovery["standby_takeover_s"] = await takeover(http, stack, seconds)
    finally:
        seconds.stop()  # a failed run leaves no replica behind to hold its locks
    await bus.close()

    def median(rounds: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    return {
        "first_launch_with_build_s": built,
        "one_replica_each": {
            "launches_per_minute": median(one, "launches_per_minute"),
            "rounds": one,
        },
        "two_replicas_each": {
            "launches_per_minute": median(two, "launches_per_minute"),
            "rounds": two,
        },
        "two_over_one": median(two, "launches_per_minute") / median(one, "launches_per_minute"),
        "recovery": recovery,
    }


def main() -> None:
    # Readable by the resolver, which runs as the services' unprivileged user.
    with readable_dir("bindery-bench-") as tmp:
        repo = tmp / "bench-replicas"
        make_repo(repo, {"requirements.txt": ""})
        stacks = started_stack(LOG_DIR.parent / "bench-replicas", SLOT)
        stack = next(stacks)
        try:
            results = asyncio.run(measure(stack, repo))
        finally:
            next(stacks, None)  # the rest of the generator stops the stack
    write_report("replicas", results)


if __name__ == "__main__":
    main()
