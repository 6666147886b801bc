"""Two replicas each of the resolver and the gateway (issue 14): launches requested through both
gateways spread over both resolvers, and each is resolved once (the event log holds one
`ref-resolved` per launch); a session launched through either gateway is served by both, on
each one's own session origins.

The second replicas run beside the test stack's, on ports past those the stack and the other
replica tests use (gateway + 0..10, + 15..18): the second gateway on + 12, the second resolver's
health on + 13.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus.eventlog import read
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import Stack, build_path, launch, launch_containers, stop_session

pytestmark = pytest.mark.e2e

SECOND_GATEWAY_OFFSET = 12
SECOND_RESOLVER_HEALTH_OFFSET = 13
#: Enough launches at once that the broker hands each resolver some (it takes turns).
LAUNCHES = 6


@dataclass(frozen=True)
class Gateway:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def session_url(self, session: str) -> str:
        """The session on this gateway's session origins (BINDERY_SESSIONS_HOST)."""
        return f"http://{session}.localhost:{self.port}/user/{session}/"


@pytest.fixture(scope="module")
async def gateways(stack: Stack, http: aiohttp.ClientSession) -> AsyncIterator[list[Gateway]]:
    """The stack's gateway and a second one, with a second resolver beside the stack's."""
    second = Gateway(stack.slot.gateway_port + SECOND_GATEWAY_OFFSET)
    saved = dict(stack.env)
    stack.env.update(
        BINDERY_PORT=str(second.port),
        BINDERY_PUBLIC_URL=second.url,
        BINDERY_SESSIONS_HOST=f"localhost:{second.port}",
    )
    try:
        resolver_health = stack.slot.gateway_port + SECOND_RESOLVER_HEALTH_OFFSET
        started = {
            "resolver": stack.spawn("resolver", resolver_health, "resolver-second"),
            "gateway": stack.spawn("gateway", None, "gateway-second"),
        }
    finally:
        stack.env.clear()
        stack.env.update(saved)

    async def healthy() -> bool:
        for service, process in started.items():
            assert process.poll() is None, f"the second {service} exited"
        for url in (f"http://127.0.0.1:{resolver_health}/health", f"{second.url}/health"):
            async with http.get(url) as resp:
                if resp.status != 200:
                    return False
        return True

    try:
        await eventually(
            healthy,
            within=60,
            every=0.2,
            what="the second resolver and gateway healthy",
            ignoring=(aiohttp.ClientError,),
        )
        yield [Gateway(stack.slot.gateway_port), second]
    finally:
        for process in started.values():
            process.terminate()
        for process in started.values():
            await asyncio.to_thread(process.wait, 30)


def resolutions(stack: Stack, launch_ids: set[str]) -> dict[str, Counter[str]]:
    """Per resolver replica (by its log), how often it resolved each of `launch_ids`."""
    found: dict[str, Counter[str]] = {}
    for replica in ("resolver", "resolver-second"):
        counts: Counter[str] = Counter()
        for line in (stack.log_dir / f"{replica}.log").read_text(errors="replace").splitlines():
            if '"resolve.completed"' not in line:
                continue
            record = json.loads(line)
            if record.get("launch_id") in launch_ids:
                counts[record["launch_id"]] += 1
        found[replica] = counts
    return found


async def test_launches_through_both_gateways_spread_over_both_resolvers_once_each(
    stack: Stack, http: aiohttp.ClientSession, repos: Path, gateways: list[Gateway]
) -> None:
    repo = repos / "edge-replicas-resolve"
    make_repo(repo, {"README.md": "resolved by either resolver, once\n"})
    path = build_path(f"file://{repo}", "main") + "?build_only=true"
    launches = await asyncio.gather(
        *(launch(http, gateways[n % 2].url, path) for n in range(LAUNCHES))
    )
    for events in launches:
        assert events[-1]["phase"] == "ready", events[-3:]
    launch_ids = {events[-1]["launch_id"] for events in launches}
    assert len(launch_ids) == LAUNCHES

    resolved = [
        record.event.launch_id
        async for record in read(stack.env["BINDERY_AMQP_URL"], event_type="ref-resolved")
        if record.event.launch_id in launch_ids
    ]
    assert Counter(resolved) == dict.fromkeys(launch_ids, 1), "each launch resolved once"
    by_replica = resolutions(stack, launch_ids)
    assert by_replica["resolver"] + by_replica["resolver-second"] == dict.fromkeys(launch_ids, 1)
    assert by_replica["resolver"] and by_replica["resolver-second"], (
        f"launches spread over both resolvers: {by_replica}"
    )


@pytest.fixture(scope="module")
def served_repo(repos: Path) -> Path:
    path = repos / "edge-replicas-serve"
    make_repo(path, {"README.md": "served by every gateway\n"})
    return path


@pytest.mark.parametrize("through", [0, 1], ids=["first-gateway", "second-gateway"])
async def test_a_session_launched_through_either_gateway_is_served_by_both(
    stack: Stack,
    http: aiohttp.ClientSession,
    served_repo: Path,
    gateways: list[Gateway],
    through: int,
) -> None:
    path = build_path(f"file://{served_repo}", "main")
    events = await launch(http, gateways[through].url, path)
    ready = events[-1]
    assert ready["phase"] == "ready", events[-3:]
    try:
        session = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
        assert ready["url"] == gateways[through].session_url(session)
        ours = launch_containers(ready["launch_id"], stack.slot.instance)
        assert sum(len(ids) for ids in ours.values()) == 1, f"one session: {ours}"
        auth = {"Authorization": f"token {ready['token']}"}

        for gateway in gateways:
            url = f"{gateway.session_url(session)}api/status"

            async def served(url: str = url) -> dict[str, Any] | None:
                async with http.get(url, headers=auth) as resp:
                    return dict(await resp.json()) if resp.status == 200 else None

            # The other gateway learns the route from the same pod-ready, moments later.
            status = await eventually(
                served, within=30, every=0.2, what=f"the session served on port {gateway.port}"
            )
            assert "started" in status
    finally:
        stop_session(ready["launch_id"])
