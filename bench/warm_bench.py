"""Warm pool benchmark (issue 16, item 2): a skewed workload replayed through the whole started
stack, with the adaptive pool, without a pool, and with a fixed one, against the raw `podman run`
floor measured in the same run. Writes bench/results/warm.json.

- workload: `BENCH_WARM_LAUNCHES` launches (default 40: the issue's 300 scaled down so the
  whole benchmark stays within about 6 minutes on this 2-core machine) over 40 repositories
  with Zipf popularity (s = 1), arriving in bursts of 2-6 launches at once, a burst every
  3-13 s (about 0.4 launches/s: at 0.7/s the two cores could not keep up and queueing, not the
  pool, set the times); each session is stopped as soon as it is ready. The same seeded trace
  for each mode.
- repositories: 40 git repositories, one built for real; the other 39 images are that image
  tagged under the names the resolver gives their commits and pushed to the registry (a build
  each would take the whole budget). Images are on both nodes before the runs, so no launch
  pulls: what differs between the modes is the pool alone.
- modes, in this order, each with the scheduler restarted: `none` (BINDERY_WARM_POOL_SHARE=0),
  `fixed` (the old BINDERY_WARM_POOL_SIZE, emulated as a fixed count of `BENCH_WARM_FIXED`
  sessions: the share that holds exactly that many), `adaptive` (the default share) and
  `adaptive_large`, only when `BENCH_WARM_LARGE_SHARE` is set (0.5 is where the goals can be
  met, so an operator sees the trade-off). The pools follow the demand the scheduler reads back
  from the event log (the earlier modes' launches: the same trace, so the pool knows which
  repositories this run launches, as a pool does for a steady daily workload), and each run
  starts once its pool is filled (at most 60 s).
- per mode: p50/p90/p99 launch time (/build request to `ready`), failures, warm-pool hits (a
  session named for a pool id, not the launch), and the memory the pool held (warm sessions
  listed every second, counted at `BINDERY_WARM_SESSION_MEMORY` as the budget counts them; and
  what `podman stats` says they use once the pool is filled).
- floor: `podman run -d` of the built image until Jupyter answers, once before each mode.
  Goals (issue 16): adaptive p50 <= 0.3 s and p90 <= the floor.

Run it alone (`make bench`): the machine's two cores are the bottleneck being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from reporting import machine, percentile, write_report
from scheduler_bench import floor_once, stop, timed_launch, until_sessions

from bindery.bus import Bus
from bindery.naming import session_name
from bindery.resolver.resolve import image_name
from bindery.runtimes import PodmanRuntime
from bindery.scheduler.popularity import warm_pool_sessions
from bindery.scheduler.settings import SchedulerSettings
from bindery.settings import GiB

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gitrepo import make_repo
from tests.support.sandbox import readable_dir
from tests.support.stack import INSTANCE, NODES, REPO, Stack, build_path, launch, started_stack

LAUNCHES = int(os.environ.get("BENCH_WARM_LAUNCHES", "40"))
FIXED = int(os.environ.get("BENCH_WARM_FIXED", "4"))
# Unset: no such mode (it takes a quarter of the bench's time; `make bench` stays in its budget).
LARGE_SHARE = float(os.environ.get("BENCH_WARM_LARGE_SHARE", "0"))
REPOSITORIES = 40
ZIPF_S = 1.0
BURST = (2, 6)
BURST_GAP_S = (3.0, 13.0)
SEED = 16
POOL_FILL_LIMIT_S = 60.0
P50_GOAL_S = 0.3
DEFAULTS = SchedulerSettings(session_secret="x" * 32)


def trace() -> list[tuple[float, list[int]]]:
    """Bursts as (seconds after the start, repository indexes), Zipf-popular, seeded."""
    rng = random.Random(SEED)
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(REPOSITORIES)]
    bursts, at, left = [], 0.0, LAUNCHES
    while left > 0:
        size = min(left, rng.randint(*BURST))
        bursts.append((at, rng.choices(range(REPOSITORIES), weights, k=size)))
        left -= size
        at += rng.uniform(*BURST_GAP_S)
    return bursts


def podman(*args: str, url: str | None = None) -> str:
    where = ["--url", url] if url else []
    return subprocess.run(
        ["podman", *where, *args], check=True, capture_output=True, text=True
    ).stdout


def tag_everywhere(built: str, names: list[str]) -> None:
    """Each name an image in the registry with the built image's content, on every node."""
    podman("pull", "--tls-verify=false", built)
    for name in names:
        if name != built:
            podman("tag", built, name)
            podman("push", "--tls-verify=false", name)
        for url in NODES.values():
            podman("pull", "--tls-verify=false", name, url=url)


async def pool_held(runtime: PodmanRuntime, samples: list[int], done: asyncio.Event) -> None:
    while not done.is_set():
        samples.append(len(await runtime.list_warm()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)


def pool_memory_measured() -> float:
    """The memory (GiB) the warm sessions of every node use now, as `podman stats` says (their
    cgroups' usage): what the pool really holds, beside what its budget counts."""
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    used = 0.0
    for url in NODES.values():
        listed = subprocess.run(
            ["podman", "--url", url, "stats", "--no-stream", "--format", "json"],
            check=True,
            capture_output=True,
            text=True,
        )
        for container in json.loads(listed.stdout or "[]"):
            if container["name"].startswith(f"{INSTANCE}-warm-"):
                found = re.match(r"([\d.]+)([kMG]?B)", container["mem_usage"])
                assert found, container["mem_usage"]
                used += float(found[1]) * units[found[2]]
    return used / GiB


async def run_trace(
    http: aiohttp.ClientSession,
    stack: Stack,
    bus: Bus,
    runtime: PodmanRuntime,
    paths: list[str],
    urls: list[str],
) -> dict[str, Any]:
    """Every launch of the trace, bursts at their times; each session stopped once ready."""
    load_before = os.getloadavg()[0]  # other work on the machine skews the modes unevenly
    began = time.perf_counter()
    times: list[float] = []
    failed: list[str] = []
    hits = 0

    async def one(index: int) -> None:
        nonlocal hits
        try:
            seconds, ready = await timed_launch(http, stack, paths[index])
        except Exception as exc:
            failed.append(repr(exc))
            return
        if ready.get("phase") != "ready":
            failed.append(str(ready.get("message")))
            return
        times.append(seconds)
        session = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
        hits += session != session_name(urls[index], ready["launch_id"])
        await stop(bus, ready)

    samples: list[int] = []
    done = asyncio.Event()
    sampler = asyncio.create_task(pool_held(runtime, samples, done))
    launches = []
    for at, indexes in trace():
        await asyncio.sleep(max(0.0, began + at - time.perf_counter()))
        launches += [asyncio.create_task(one(i)) for i in indexes]
    await asyncio.gather(*launches)
    done.set()
    await sampler
    counted_gib = DEFAULTS.warm_session_memory / GiB
    return {
        "launches": len(times) + len(failed),
        "failures": len(failed),
        "failed": failed[:5],
        "warm_hits": hits,
        "p50_s": percentile(times, 0.5),
        "p90_s": percentile(times, 0.9),
        "p99_s": percentile(times, 0.99),
        "mean_s": statistics.fmean(times),
        "seconds": time.perf_counter() - began,
        "load_average_before": load_before,
        "ready_s": times,
        "pool_sessions": {"mean": statistics.fmean(samples), "max": max(samples)},
        "pool_memory_gib_counted": {
            "mean": statistics.fmean(samples) * counted_gib,
            "max": max(samples) * counted_gib,
        },
    }


async def until_pool(
    http: aiohttp.ClientSession, stack: Stack, runtime: PodmanRuntime, sessions: int
) -> float:
    """Wait (at most POOL_FILL_LIMIT_S) until `sessions` warm sessions answer; how long it took."""
    began = time.perf_counter()
    with_limit = until_sessions(http, stack, runtime, 0, sessions)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(with_limit, POOL_FILL_LIMIT_S)
    return time.perf_counter() - began


async def measure(stack: Stack, repos: list[tuple[str, str]]) -> dict[str, Any]:
    urls = [url for url, _ in repos]
    paths = [build_path(url, "main") for url in urls]
    runtime = PodmanRuntime(INSTANCE, NODES)
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "bench", connect_timeout=10)
    await bus.connect()
    capacity = sum([await runtime.node_memory(node) for node in NODES])
    counted = DEFAULTS.warm_session_memory

    def sessions(share: float) -> int:
        return warm_pool_sessions(capacity, share, counted)

    # The share that holds exactly FIXED sessions (half a session over, against rounding).
    fixed_share = (FIXED + 0.5) * counted / capacity
    modes = {
        "none": ("0", 0),
        "fixed": (f"{fixed_share:.6f}", FIXED),
        "adaptive": (str(DEFAULTS.warm_pool_share), sessions(DEFAULTS.warm_pool_share)),
    }
    if LARGE_SHARE:
        modes["adaptive_large"] = (str(LARGE_SHARE), sessions(LARGE_SHARE))
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        events = await launch(http, stack.gateway, paths[0])  # the one real build
        assert events[-1]["phase"] == "ready", events[-1]
        built = events[-1]["image"]
        await stop(bus, events[-1])
        registry, prefix = DEFAULTS.registry, stack.env["BINDERY_IMAGE_PREFIX"]
        names = [image_name(registry, prefix, url, commit) for url, commit in repos]
        assert names[0] == built, (names[0], built)
        tag_everywhere(built, names)
        await until_sessions(http, stack, runtime, 0, 0)

        floors: list[float] = []
        results: dict[str, Any] = {}
        for mode, (share, sessions) in modes.items():
            stack.env["BINDERY_WARM_POOL_SHARE"] = share
            stack.restart("scheduler")
            stack.wait_active("scheduler")
            floors.append(await floor_once(http, built))
            fill_s = await until_pool(http, stack, runtime, sessions)
            results[mode] = {"share": float(share), "pool_target_sessions": sessions}
            results[mode]["pool_filled_s"] = fill_s
            results[mode]["pool_memory_gib_measured_when_filled"] = pool_memory_measured()
            results[mode] |= await run_trace(http, stack, bus, runtime, paths, urls)
            stack.env["BINDERY_WARM_POOL_SHARE"] = "0"
            stack.restart("scheduler")
            stack.wait_active("scheduler")
            for session in await runtime.list_warm():  # or the next mode starts with them
                await runtime.stop(session.name)
            await until_sessions(http, stack, runtime, 0, 0)
    await bus.close()
    await runtime.close()

    floor = statistics.median(floors)
    return {
        "machine": machine(),
        "workload": {
            "launches": LAUNCHES,
            "repositories": REPOSITORIES,
            "zipf_s": ZIPF_S,
            "burst_sizes": BURST,
            "burst_gap_s": BURST_GAP_S,
            "seed": SEED,
            "scaled_down_from": 300,
        },
        "cluster_session_memory_gib": capacity / GiB,
        "session_memory_limit_gib": DEFAULTS.memory_limit / GiB,
        "session_memory_reservation_gib": DEFAULTS.memory_reservation / GiB,
        "warm_session_memory_gib": counted / GiB,
        "floor_podman_run_s": {"median": floor, "runs": floors},
        **results,
        "goals": {
            "p50_at_most_s": P50_GOAL_S,
            "p90_at_most_floor_s": floor,
            "met": {
                mode: met(results[mode], floor) for mode in results if mode.startswith("adaptive")
            },
        },
    }


def met(result: dict[str, Any], floor: float) -> bool:
    return bool(result["p50_s"] <= P50_GOAL_S and result["p90_s"] <= floor)


def main() -> None:
    # Readable by the resolver, which runs as the services' unprivileged user.
    with readable_dir("bindery-bench-") as tmp:
        repos = []
        for index in range(REPOSITORIES):
            path = tmp / f"warm-{index:02d}"
            files = {"README.md": f"warm bench {index}\n", "requirements.txt": "six==1.16.0\n"}
            repos.append((f"file://{path}", make_repo(path, files)))
        stack_runs = started_stack(REPO / ".bindery/bench-logs/warm")
        stack = next(stack_runs)
        try:
            result = asyncio.run(measure(stack, repos))
        finally:
            stack_runs.close()
    write_report("warm", result)


if __name__ == "__main__":
    main()
