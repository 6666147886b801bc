"""Fakes for the gateway's unit tests: a harness holding a gateway app served by aiohttp's test
server (or, `lane="fast"`, as the gateway serves it: fastlane.py in front of aiohttp) over the
shared fake bus (tests/support/fakebus.py), which records and can answer what is published."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from bindery.events import (
    BuildLog,
    BuildStarted,
    Event,
    LaunchRequested,
    PodScheduled,
)
from bindery.gateway import fastlane
from bindery.gateway.app import create_app
from bindery.gateway.deps import Gateway
from bindery.gateway.handlers import EventHandlers
from bindery.gateway.settings import GatewaySettings
from bindery.providers import binder_env
from bindery.runtimes import Session
from bindery.tokens import session_token
from tests.support.fakebus import FakeBus
from tests.support.launches import image_built, launch_context, pod_ready, ref_resolved

SECRET = "x" * 32
GIT_SPEC = "https%3A%2F%2Fexample.org%2Fowner%2Frepo.git/main"
S1_TOKEN = session_token(SECRET, "s1")
# What a client sees of `full_launch`, one phase per event: three log lines while building.
FULL_LAUNCH_PHASES = [
    "waiting",
    "fetching",
    "building",
    "building",
    "building",
    "building",
    "built",
    "launching",
    "ready",
]


@dataclass
class Harness:
    client: TestClient[Any, Any]
    gateway: Gateway
    bus: FakeBus
    handlers: EventHandlers
    registry_ok: list[bool]


def settings(**kw: Any) -> GatewaySettings:
    kw.setdefault("client_log_dir", "")
    return GatewaySettings(session_secret=SECRET, public_url="http://gw.example:8585", **kw)


def parse_sse(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        ident, data = None, None
        for line in block.split("\n"):
            if line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            events.append((ident, data))
    return events


def same_but_handoff(first: list[Any], again: list[Any]) -> bool:
    """Two replays of a launch agree except for the handoff codes (one fresh code per send)."""

    def strip(item: Any) -> Any:
        if isinstance(item, tuple):
            return tuple(strip(part) for part in item)
        if isinstance(item, dict):
            return {k: v for k, v in item.items() if k != "handoff"}
        return item

    return [strip(i) for i in first] == [strip(i) for i in again]


def full_launch(h: Harness, *, session: str = "repo-abc") -> Callable[[Event], Awaitable[None]]:
    """Answer a launch-requested with the whole flow, synchronously inside publish(): the
    gateway must already be listening when it publishes."""

    async def answer(event: Event) -> None:
        if not isinstance(event, LaunchRequested):
            return
        lid = event.launch_id
        await h.handlers.on_event(event)  # the echo of our own request
        repo_url, resolved = "https://example.org/owner/repo.git", "c" * 40
        context = launch_context(
            provider=event.provider,
            spec=event.spec,
            repo_url=repo_url,
            ref="main",
            resolved_ref=resolved,
            session_env=binder_env(
                event.launch_host, event.provider, event.spec, repo_url, resolved
            ),
        )
        await h.handlers.on_event(
            ref_resolved(lid, image="127.0.0.1:5000/repo:ccc", context=context)
        )
        await h.handlers.on_event(BuildStarted(launch_id=lid, image="img", builder="b"))
        for i in range(3):
            await h.handlers.on_log(BuildLog(launch_id=lid, image="img", message=f"step {i}\n"))
        await h.handlers.on_event(image_built(lid, image="img", context=context))
        await h.handlers.on_event(
            PodScheduled(launch_id=lid, session=session, node="n", image="img")
        )
        await h.handlers.on_event(
            pod_ready(lid, session=session, node="n", image="img", context=context)
        )

    return answer


class FastLaneServer(TestServer):
    """aiohttp's test server with the gateway's connections: each in the fast lane until it
    hands over to aiohttp (`fastlane.serve`)."""

    def __init__(self, app: web.Application, settings: GatewaySettings) -> None:
        super().__init__(app)
        self._settings = settings
        self._served: fastlane.Serving | None = None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._served = await fastlane.serve(self.app, self._settings, "127.0.0.1", 0)
        self.runner = self._served.runner
        self.port = self._served.port
        self.scheme = "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")

    async def close(self) -> None:
        if self._served is not None and not self.closed:
            await self._served.close()
            self._root = None
            self._closed = True


async def make_harness(lane: str = "aiohttp", **kw: Any) -> AsyncIterator[Harness]:
    bus = FakeBus()
    registry_ok = [True]

    async def registry_check() -> bool:
        return registry_ok[0]

    gateway = Gateway.create(
        settings(**{"keepalive_interval": 0.05, "progress_final_line_wait": 0.05, **kw}),
        bus,
        registry_check=registry_check,
    )
    app = create_app(gateway)
    server = FastLaneServer(app, gateway.settings) if lane == "fast" else TestServer(app)
    client = TestClient(server)
    await client.start_server()
    try:
        yield Harness(client, gateway, bus, EventHandlers(gateway), registry_ok)
    finally:
        await client.close()


def listed_session(name: str, *, running: bool = True) -> Session:
    """A session as the runtime lists it after a gateway restart."""
    return Session(
        name=name,
        node="n",
        launch_id="e" * 32,
        image="i",
        repo="r",
        started=datetime.now(UTC),
        target="http://127.0.0.1:7",
        running=running,
    )
