"""Scheduler benchmark: launch times through the whole started stack, against a floor measured
in the same run. Writes bench/results/scheduler_launch.json.

- floor: raw `podman run -d` of the same image with the same Jupyter command, until
  /api/status answers (what no scheduler can beat on this machine);
- cached launch: the gateway's /build request for an image already built and on a node, until
  the `ready` event (target: at most 1.3 x the floor);
- warm-pool launch: the same request served from a pre-started session (target: under 0.3 s);
- fair bursts: 20 concurrent launches of the built image (warm pool off), alternately with each
  node's start line (`BINDERY_START_CONCURRENCY` at the node's share of this machine's cores)
  and without one (as many starts at once as launches: every session starts together), over
  `BENCH_BURST_ROUNDS` rounds each.
  For each burst: failures, p50, p99, the last ready, and how many pairs of launches became
  ready in the opposite order to the one they were requested in. Targets (issue 16): with the
  line, p50 <= 0.6 x p99 and the last one no later than without it, in the same run.

Run it alone (`make bench`): the machine's two cores are the bottleneck being measured.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from reporting import machine, percentile, write_report

from bindery.bus import Bus
from bindery.events import IdleDetected, StopReason
from bindery.runtimes import PodmanRuntime, Session
from bindery.tokens import session_token

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gitrepo import make_repo
from tests.support.sandbox import readable_dir
from tests.support.stack import (
    INSTANCE,
    NODES,
    REPO,
    Stack,
    build_path,
    launch,
    started_stack,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BURST_ROUNDS = int(os.environ.get("BENCH_BURST_ROUNDS", "2"))
CONCURRENT = 20
FAIR_TARGET_RATIO = 0.6
# The setting is per node and its documentation sizes it from the node's cores: here the nodes
# share this machine's, so each gets its share (two nodes on 2 cores: 1 each, not 2 and 2).
LIMITED = {"BINDERY_START_CONCURRENCY": str(max(1, (os.cpu_count() or 1) // len(NODES)))}
UNLIMITED = {"BINDERY_START_CONCURRENCY": str(CONCURRENT)}


async def floor_once(http: aiohttp.ClientSession, image: str) -> float:
    """`podman run` until Jupyter answers, with the same command and limits a session gets."""
    name = f"bench-floor-{os.getpid()}"
    token = "bench-floor-token"
    began = time.perf_counter()
    options = ["--name", name, "--user", "1000", "-p", "127.0.0.1::8888", "-m", "2g"]
    options += ["--memory-reservation", "1g", "-e", f"JUPYTER_TOKEN={token}"]
    command = ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
    command += [f"--ServerApp.base_url=/user/{name}/", "--ServerApp.root_dir=/home/jovyan"]
    subprocess.run(
        ["podman", "run", "-d", *options, image, *command], check=True, capture_output=True
    )
    port = subprocess.run(
        ["podman", "port", name, "8888"], check=True, capture_output=True, text=True
    ).stdout.strip()
    url = f"http://{port}/user/{name}/api/status"
    try:
        while True:
            try:
                async with http.get(url, headers={"Authorization": f"token {token}"}) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - began
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)


async def timed_launch(
    http: aiohttp.ClientSession, stack: Stack, path: str
) -> tuple[float, dict[str, Any]]:
    began = time.perf_counter()
    events = await launch(http, stack.gateway, path)
    return time.perf_counter() - began, events[-1]


async def stop(bus: Bus, ready: dict[str, Any]) -> None:
    session = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
    await bus.publish(
        IdleDetected(launch_id=ready["launch_id"], session=session, reason=StopReason.IDLE)
    )


async def answers(http: aiohttp.ClientSession, session: Session, secret: str) -> bool:
    token = session_token(secret, session.name)
    url = f"{session.target}/user/{session.name}/api/status"
    try:
        async with http.get(url, headers={"Authorization": f"token {token}"}) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def until_sessions(
    http: aiohttp.ClientSession, stack: Stack, runtime: PodmanRuntime, launched: int, warm: int
) -> None:
    """Wait until the runtime shows this many launched sessions and `warm` answering warm ones."""
    secret = stack.env["BINDERY_SESSION_SECRET"]
    while True:
        sessions, pool = await runtime.list_sessions(), await runtime.list_warm()
        ready = [s for s in pool if s.running and await answers(http, s, secret)]
        if len(sessions) == launched and len(ready) >= warm:
            return
        await asyncio.sleep(0.2)


async def measure(stack: Stack, repo_url: str) -> dict[str, Any]:
    path = build_path(repo_url, "main")
    runtime = PodmanRuntime(INSTANCE, NODES)
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "bench", connect_timeout=10)
    await bus.connect()
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        built_in, ready = await timed_launch(http, stack, path)
        assert ready["phase"] == "ready", ready
        image = ready["image"]
        await stop(bus, ready)
        await until_sessions(http, stack, runtime, 0, 0)

        floors, cached = [], []
        for _ in range(ROUNDS):  # interleaved, so drift in machine load hits both alike
            floors.append(await floor_once(http, image))
            seconds, ready = await timed_launch(http, stack, path)
            assert ready["phase"] == "ready", ready
            cached.append(seconds)
            await stop(bus, ready)
            await until_sessions(http, stack, runtime, 0, 0)

        del stack.env["BINDERY_WARM_POOL_SHARE"]  # the default pool; the test stack has none
        stack.restart("scheduler")
        stack.wait_active("scheduler")
        _, ready = await timed_launch(http, stack, path)  # makes the image popular
        await stop(bus, ready)
        warm = []
        for _ in range(ROUNDS):
            await until_sessions(http, stack, runtime, 0, 1)
            seconds, ready = await timed_launch(http, stack, path)
            assert ready["phase"] == "ready", ready
            warm.append(seconds)
            await stop(bus, ready)
        stack.env["BINDERY_WARM_POOL_SHARE"] = "0"
        stack.restart("scheduler")
        stack.wait_active("scheduler")
        # A scheduler without a pool stops the warm sessions it adopted only at its next pass
        # over the pool: the bursts would claim them first. Stopped here, each gives its seat
        # back as it exits.
        for session in await runtime.list_warm():
            await runtime.stop(session.name)
        await until_sessions(http, stack, runtime, 0, 0)

        bursts: dict[str, list[dict[str, Any]]] = {"limited": [], "unlimited": []}
        for _ in range(BURST_ROUNDS):  # alternated, so drift in machine load hits both alike
            for kind, env in (("limited", LIMITED), ("unlimited", UNLIMITED)):
                stack.env.update(env)
                stack.restart("scheduler")
                stack.wait_active("scheduler")
                bursts[kind].append(await burst(http, stack, bus, path))
                await until_sessions(http, stack, runtime, 0, 0)
        del stack.env["BINDERY_START_CONCURRENCY"]
    await bus.close()
    await runtime.close()

    floor, cached_median = statistics.median(floors), statistics.median(cached)
    limited, unlimited = summary(bursts["limited"]), summary(bursts["unlimited"])
    return {
        "machine": machine() | {"nodes": len(NODES)},
        "first_launch_with_build_s": built_in,
        "floor_podman_run_s": {"median": floor, "runs": floors},
        "cached_launch_s": {"median": cached_median, "runs": cached},
        "cached_over_floor": cached_median / floor,
        "cached_target_ratio": 1.3,
        "warm_pool_launch_s": {"median": statistics.median(warm), "runs": warm},
        "warm_target_s": 0.3,
        "fair_bursts": {
            "launches": CONCURRENT,
            "rounds": BURST_ROUNDS,
            "limited_setting": LIMITED,
            "unlimited_setting": UNLIMITED,
            "limited": limited,
            "unlimited": unlimited,
            "target": {
                "p50_over_p99_at_most": FAIR_TARGET_RATIO,
                "last_ready_no_later_than_unlimited": True,
                "met": bool(
                    limited["p50_over_p99"] <= FAIR_TARGET_RATIO
                    and limited["last_ready_s"] <= unlimited["last_ready_s"]
                ),
            },
        },
    }


async def burst(http: aiohttp.ClientSession, stack: Stack, bus: Bus, path: str) -> dict[str, Any]:
    """CONCURRENT launches asked for at once, in a known order; each one's time to ready."""
    load_before = os.getloadavg()[0]  # other work on the machine skews both kinds of burst
    results = await asyncio.gather(
        *(timed_launch(http, stack, path) for _ in range(CONCURRENT)), return_exceptions=True
    )
    ready_s: list[float] = []
    failed: list[str] = []
    for result in results:
        if isinstance(result, BaseException):
            failed.append(repr(result))
        elif result[1]["phase"] != "ready":
            failed.append(str(result[1].get("message")))
        else:
            ready_s.append(result[0])
            await stop(bus, result[1])
    return {
        "ready_s_in_request_order": ready_s,
        "failures": len(failed),
        "failed": failed,
        "load_average_before": load_before,
    }


def out_of_order_pairs(ready_s: list[float]) -> int:
    """Pairs of launches where the one asked for later was ready first."""
    return sum(1 for i, early in enumerate(ready_s) for late in ready_s[i + 1 :] if late < early)


def summary(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """Each burst's p50, p99 and last ready, and their medians over the rounds."""
    for run in bursts:
        ready = run["ready_s_in_request_order"]
        if not ready:
            raise RuntimeError(f"every launch of a burst failed: {run['failed'][:3]}")
        run["p50_s"] = percentile(ready, 0.5)
        run["p99_s"] = percentile(ready, 0.99)
        run["last_ready_s"] = max(ready)
        run["p50_over_p99"] = run["p50_s"] / run["p99_s"]
        run["out_of_request_order_pairs"] = out_of_order_pairs(ready)
    p50 = statistics.median(run["p50_s"] for run in bursts)
    p99 = statistics.median(run["p99_s"] for run in bursts)
    return {
        "p50_s": p50,
        "p99_s": p99,
        "p50_over_p99": p50 / p99,
        "last_ready_s": statistics.median(run["last_ready_s"] for run in bursts),
        "failures": sum(run["failures"] for run in bursts),
        "bursts": bursts,
    }


def main() -> None:
    # Readable by the resolver, which runs as the services' unprivileged user.
    with readable_dir("bindery-bench-") as tmp:
        repo = tmp / "bench-scheduled"
        make_repo(repo, {"README.md": "scheduler bench\n", "requirements.txt": "six==1.16.0\n"})
        stack_runs = started_stack(REPO / ".bindery/bench-logs/scheduler")
        stack = next(stack_runs)
        try:
            result = asyncio.run(measure(stack, f"file://{repo}"))
        finally:
            stack_runs.close()
    write_report("scheduler_launch", result)


if __name__ == "__main__":
    main()
