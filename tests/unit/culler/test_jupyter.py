"""Asking a session's Jupyter about its activity (jupyter.py), against a server that answers as
Jupyter Server 2 does, and one that does not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bindery.culler.cull import NoAnswer
from bindery.culler.jupyter import MAX_ANSWER_BYTES, JupyterActivity
from bindery.tokens import session_token

SECRET = "s" * 32
SESSION = "demo-1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def kernel(state: str, last: datetime) -> dict[str, Any]:
    return {"id": "k", "name": "python3", "execution_state": state, "last_activity": iso(last)}


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")  # as jupyter_server writes it


class FakeJupyter:
    def __init__(self) -> None:
        self.kernels: Any = []
        self.terminals: Any = []
        self.terminals_status = 200
        self.delay = 0.0
        self.seen: list[web.Request] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(f"/user/{SESSION}/api/kernels", self.answer)
        app.router.add_get(f"/user/{SESSION}/api/terminals", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        await asyncio.sleep(self.delay)
        if request.headers.get("Authorization") != f"token {session_token(SECRET, SESSION)}":
            return web.json_response({"message": "Forbidden"}, status=403)
        if request.path.endswith("terminals"):
            if self.terminals_status != 200:
                return web.json_response({}, status=self.terminals_status)
            body = self.terminals
        else:
            body = self.kernels
        return web.Response(
            body=body if isinstance(body, bytes) else json.dumps(body).encode(),
            content_type="application/json",
        )


@pytest.fixture
async def jupyter() -> AsyncIterator[tuple[FakeJupyter, str]]:
    fake = FakeJupyter()
    server = TestServer(fake.app())
    await server.start_server()
    try:
        yield fake, str(server.make_url("/"))
    finally:
        await server.close()


@pytest.fixture
async def ask() -> AsyncIterator[JupyterActivity]:
    async with aiohttp.ClientSession() as http:
        yield JupyterActivity(http, SECRET, timeout=1.0)


async def test_the_latest_kernel_or_terminal_activity_is_the_session_s(
    jupyter: tuple[FakeJupyter, str], ask: JupyterActivity
) -> None:
    fake, target = jupyter
    fake.kernels = [kernel("idle", T0), kernel("idle", T0 + timedelta(minutes=2))]
    fake.terminals = [{"name": "1", "last_activity": iso(T0 + timedelta(minutes=5))}]
    assert await ask(SESSION, target) == T0 + timedelta(minutes=5)
    fake.terminals = []
    assert await ask(SESSION, target) == T0 + timedelta(minutes=2)


async def test_a_busy_kernel_means_active_now(
    jupyter: tuple[FakeJupyter, str], ask: JupyterActivity
) -> None:
    fake, target = jupyter
    fake.kernels = [kernel("idle", T0), kernel("busy", T0)]
    before = datetime.now(UTC)
    answer = await ask(SESSION, target)
    assert answer is not None and answer >= before


async def test_nothing_running_is_no_activity_and_disabled_terminals_are_none(
    jupyter: tuple[FakeJupyter, str], ask: JupyterActivity
) -> None:
    fake, target = jupyter
    fake.terminals_status = 404
    assert await ask(SESSION, target) is None


async def test_the_culler_s_requests_carry_the_token_and_do_not_count_as_activity(
    jupyter: tuple[FakeJupyter, str], ask: JupyterActivity
) -> None:
    fake, target = jupyter
    await ask(SESSION, target)
    assert [r.path.rsplit("/", 1)[-1] for r in fake.seen] == ["kernels", "terminals"]
    assert all(r.query.get("no_track_activity") == "1" for r in fake.seen)


@pytest.mark.parametrize(
    "kernels",
    [
        b"<html>not json</html>",
        {"kernels": []},
        ["k"],
        [{"execution_state": "idle", "last_activity": "yesterday"}],
        [{"execution_state": "idle", "last_activity": "2026-01-01T00:00:00"}],  # no zone
        [{"execution_state": "idle"}],
        b"[" + b" " * MAX_ANSWER_BYTES + b"]",
    ],
)
async def test_answers_it_cannot_read_are_no_answer(
    jupyter: tuple[FakeJupyter, str], ask: JupyterActivity, kernels: Any
) -> None:
    fake, target = jupyter
    fake.kernels = kernels
    with pytest.raises(NoAnswer):
        await ask(SESSION, target)


async def test_a_refusal_a_slow_server_and_no_server_are_no_answer(
    jupyter: tuple[FakeJupyter, str], ask: JupyterActivity, unused_tcp_port: int
) -> None:
    fake, target = jupyter
    async with aiohttp.ClientSession() as http:
        another_secret = JupyterActivity(http, "t" * 32, timeout=1.0)
        with pytest.raises(NoAnswer, match="403"):
            await another_secret(SESSION, target)
    fake.delay = 2.0
    with pytest.raises(NoAnswer, match="Timeout"):
        await ask(SESSION, target)
    with pytest.raises(NoAnswer):
        await ask(SESSION, f"http://127.0.0.1:{unused_tcp_port}")
