"""With no builder consuming, the gateway's /health is degraded naming the builder and a new
launch is told so; once a builder is back, /health is ok and the launch goes on (issue 14)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import Stack, build_path

#: The gateway's count of consumers is at most BINDERY_STAGE_CHECK_INTERVAL (5 s) old.
HEALTH_WITHIN = 30.0


async def health_until(
    http: aiohttp.ClientSession, stack: Stack, degraded: list[str]
) -> tuple[int, dict[str, Any]]:
    """Poll /health until its `degraded` is `degraded`; that answer."""

    async def answer() -> tuple[int, dict[str, Any]] | None:
        async with http.get(f"{stack.gateway}/health") as resp:
            status, body = resp.status, await resp.json()
        return (status, body) if body["degraded"] == degraded else None

    return await eventually(
        answer, within=HEALTH_WITHIN, every=0.5, what=f"/health degraded by {degraded}"
    )


async def test_no_builder_degrades_health_and_tells_the_launch(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / "stage-health"
    make_repo(repo, {"README.md": "nothing to install\n"})
    stack.stop("builder")
    try:
        status, body = await health_until(http, stack, ["builder"])
        assert (status, body["ok"], body["degraded"]) == (503, False, ["builder"]), body
        assert body["stages"]["builder"] == 0 and body["stages"]["scheduler"] >= 1

        events: list[dict[str, Any]] = []
        async with http.get(
            stack.gateway + build_path(f"file://{repo}", "main"),
            headers={"Accept": "text/event-stream"},
        ) as resp:
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if not line.startswith("data:"):
                    continue
                events.append(json.loads(line[5:]))
                if events[-1].get("stalled") == ["builder"] and "builder" not in stack.processes:
                    # Told; now the builder comes back and the launch must go on by itself.
                    await asyncio.to_thread(stack.start, "builder")
                if events[-1]["phase"] in {"ready", "failed"}:
                    break
        notes = [event for event in events if "stalled" in event]
        assert notes and "builder is not running" in notes[0]["message"], events[:4]
        assert events[-1]["phase"] == "ready", events[-3:]
    finally:
        if "builder" not in stack.processes:
            stack.start("builder")

    status, body = await health_until(http, stack, [])
    assert (status, body["ok"], body["degraded"]) == (200, True, []), body
    assert body["stages"]["builder"] >= 1
