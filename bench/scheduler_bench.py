"""Scheduler benchmark: launch times through the whole started stack, against a floor measured
in the same run. Writes bench/results/scheduler_launch.json.

- floor: raw `podman run -d` of the same image with the same Jupyter command, until
  /api/status answers (what no scheduler can beat on this machine);
- cached launch: the gateway's /build request for an image already built and on a node, until
  the `ready` event (target: at most 1.3 x the floor);
- warm-pool launch: the same request served from a pre-started session (target: under 0.3 s);
- 20 concurrent launches of the built image: failures, p50 and p99 (target: no failure).

Run it alone (`make bench`): the machine's two cores are the bottleneck being measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

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

RESULTS = REPO / "bench/results/scheduler_launch.json"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONCURRENT = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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

        stack.env["BINDERY_WARM_POOL_SIZE"] = "1"
        stack.restart("scheduler")
        _, ready = await timed_launch(http, stack, path)  # makes the image popular
        await stop(bus, ready)
        warm = []
        for _ in range(ROUNDS):
            await until_sessions(http, stack, runtime, 0, 1)
            seconds, ready = await timed_launch(http, stack, path)
            assert ready["phase"] == "ready", ready
            warm.append(seconds)
            await stop(bus, ready)
        del stack.env["BINDERY_WARM_POOL_SIZE"]
        stack.restart("scheduler")
        await until_sessions(http, stack, runtime, 0, 0)

        results = await asyncio.gather(
            *(timed_launch(http, stack, path) for _ in range(CONCURRENT)), return_exceptions=True
        )
        durations = [r[0] for r in results if not isinstance(r, BaseException)]
        readies = [r[1] for r in results if not isinstance(r, BaseException)]
        ok = [d for d, e in zip(durations, readies, strict=True) if e["phase"] == "ready"]
        for event in readies:
            if event["phase"] == "ready":
                await stop(bus, event)
    await bus.close()
    await runtime.close()

    floor, cached_median = statistics.median(floors), statistics.median(cached)
    return {
        "machine": {"cores": os.cpu_count(), "nodes": len(NODES)},
        "first_launch_with_build_s": built_in,
        "floor_podman_run_s": {"median": floor, "runs": floors},
        "cached_launch_s": {"median": cached_median, "runs": cached},
        "cached_over_floor": cached_median / floor,
        "cached_target_ratio": 1.3,
        "warm_pool_launch_s": {"median": statistics.median(warm), "runs": warm},
        "warm_target_s": 0.3,
        "concurrent": {
            "launches": CONCURRENT,
            "failures": CONCURRENT - len(ok),
            "p50_s": percentile(ok, 0.5) if ok else None,
            "p99_s": percentile(ok, 0.99) if ok else None,
            "failed_messages": [
                str(r) if isinstance(r, BaseException) else r[1].get("message")
                for r in results
                if isinstance(r, BaseException) or r[1]["phase"] != "ready"
            ],
        },
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
