"""Culler benchmark: what one check interval costs with 10,000 tracked sessions, in CPU time,
against an anchor measured in the same run. Writes bench/results/culler.json.

- anchor: a loop over the same 10,000 tracked sessions that only reads each one's last
  activity: the least any check can cost;
- events: folding in one interval's session-activity, one event per session (the gateway
  reports each active session once per flush interval), parsed from the JSON bodies the bus
  delivers, as the culler's handler receives them;
- check, all active: every session used within the idle period (a busy deployment): decisions
  only, no session asked;
- check, all idle: every session idle by the culler's view, so each is asked about its kernels
  and terminals over HTTP (50 at a time, as by default) by a stand-in Jupyter in another
  process, and still idle: the worst case, a first check after a restart that found nothing in
  the event log. Publishing the 10,000 stops is a no-op here: the broker's cost is the bus's
  (about 3,000 confirmed messages/s on this machine).

CPU time is this process's (`time.process_time`): the culler's, not the stand-in's. Logging is
configured as in production (JSON lines at info, every stop requested logged), to /dev/null.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from reporting import write_report

from bindery import logs
from bindery.culler.cull import Culler
from bindery.culler.jupyter import JupyterActivity
from bindery.events import Event, SessionActivity, parse_event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.launches import pod_ready

REPO = Path(__file__).resolve().parents[1]
SESSIONS = int(os.environ.get("BENCH_SESSIONS", "10000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
IDLE = 600.0
INTERVAL = 30.0  # the culler's default check interval, what the CPU time is a share of
SECRET = "bench-secret-" + "x" * 16
KERNELS = json.dumps(
    [
        {
            "id": "k1",
            "name": "python3",
            "execution_state": "idle",
            "last_activity": "2026-01-01T00:00:00Z",
            "connections": 1,
        }
    ]
)


def stand_in_jupyter(port: int) -> None:
    """Every session's Jupyter at once: one idle kernel, no terminal (run in a child process)."""
    from aiohttp import web

    async def kernels(_request: web.Request) -> web.Response:
        return web.Response(text=KERNELS, content_type="application/json")

    async def terminals(_request: web.Request) -> web.Response:
        return web.Response(text="[]", content_type="application/json")

    app = web.Application()
    app.router.add_get("/user/{session}/api/kernels", kernels)
    app.router.add_get("/user/{session}/api/terminals", terminals)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until_listening(port: int) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


def culler(started: datetime, target: str, ask: Any) -> Culler:
    async def publish(_event: Event) -> None:
        return None

    tracked = Culler(IDLE, 12 * 3600, publish, ask)
    for n in range(SESSIONS):
        tracked.observe(
            pod_ready(
                f"{n:032x}",
                session=f"session-{n}",
                node="node-1",
                image="image",
                target=target,
                time=started,
            )
        )
    return tracked


def timed(run: Callable[[], object]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


async def timed_async(run: Callable[[], Awaitable[object]]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def median(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 4) for key in rounds[0]}


async def measure(target: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with aiohttp.ClientSession() as http:
        ask = JupyterActivity(http, SECRET, timeout=5.0)

        view = culler(now - timedelta(minutes=5), target, ask)

        def anchor() -> None:
            for _name, tracked in view.sessions.items():
                _ = tracked.last_activity

        bodies = [
            SessionActivity(
                launch_id=f"{n:032x}", session=f"session-{n}", last_activity=now
            ).to_json()
            for n in range(SESSIONS)
        ]

        def fold_events() -> None:
            for body in bodies:
                view.observe(parse_event(body))

        anchors = [timed(anchor) for _ in range(ROUNDS)]
        events = [timed(fold_events) for _ in range(ROUNDS)]
        active = [await timed_async(functools.partial(view.check, now)) for _ in range(ROUNDS)]
        assert not any(t.requested_at for t in view.sessions.values()), "nobody is idle"

        idle_rounds = []
        for _ in range(max(1, ROUNDS // 2)):
            idle = culler(now - timedelta(hours=1), target, ask)
            idle_rounds.append(await timed_async(functools.partial(idle.check, now)))
            requested = sum(1 for t in idle.sessions.values() if t.requested_at)
            assert requested == SESSIONS, f"{requested} stops requested"

    anchor_cpu = median(anchors)["cpu_s"]
    results = {
        "anchor": median(anchors),
        "events": median(events),
        "check_all_active": median(active),
        "check_all_idle_asked": median(idle_rounds),
    }
    for result in results.values():
        result["cpu_over_anchor"] = round(result["cpu_s"] / anchor_cpu, 1) if anchor_cpu else 0
        result["cpu_share_of_interval"] = round(result["cpu_s"] / INTERVAL, 5)
    results["check_all_idle_asked"]["sessions_asked_per_s"] = round(
        SESSIONS / results["check_all_idle_asked"]["wall_s"]
    )
    return results


def main() -> int:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "stand-in", str(port)], cwd=REPO, stdout=subprocess.DEVNULL
    )
    try:
        asyncio.run(until_listening(port))
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            logs.configure("culler", "json", "info")
            results = asyncio.run(measure(f"http://127.0.0.1:{port}"))
    finally:
        server.terminate()
        server.wait(timeout=10)
    report = {
        "benchmark": "culler",
        "sessions": SESSIONS,
        "anchor": "a loop over the same tracked sessions reading each one's last activity",
        "setup": __doc__,
        "statistic": f"median over {ROUNDS} rounds ({max(1, ROUNDS // 2)} for the all-idle check)",
        "interval_seconds": INTERVAL,
        "results": results,
    }
    write_report("culler", report, shown=results)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["stand-in"]:
        stand_in_jupyter(int(sys.argv[2]))
    else:
        sys.exit(main())
