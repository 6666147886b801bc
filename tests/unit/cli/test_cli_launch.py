"""`bindery launch`: the build path it asks for, what it shows, what it prints, and that a dropped
stream resumes the same launch."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bindery.cli.__main__ import parser
from bindery.cli.launch import build_path, launch
from bindery.events import FailureReason, LaunchFailed, LaunchRequested
from bindery.tokens import session_token
from tests.unit.gateway.fakes import SECRET, Harness, full_launch, make_harness


@pytest.mark.parametrize(
    "target, ref, provider, path",
    [
        ("https://github.com/o/r", None, None, "/build/gh/o/r/HEAD"),
        ("https://github.com/o/r/tree/dev", None, None, "/build/gh/o/r/dev"),
        ("https://github.com/o/r", "v2", None, "/build/gh/o/r/v2"),
        (
            "https://example.org/r.git",
            "main",
            None,
            "/build/git/https%3A%2F%2Fexample.org%2Fr.git/main",
        ),
        ("o/r", None, "gh", "/build/gh/o/r/HEAD"),
        ("10.5281/zenodo.3242074", None, None, "/build/zenodo/10.5281/zenodo.3242074"),
    ],
)
def test_build_path(target: str, ref: str | None, provider: str | None, path: str) -> None:
    assert build_path(target, ref, provider) == path


def test_a_local_path_becomes_a_file_url(tmp_path: Path) -> None:
    repo = tmp_path / "my repo"
    repo.mkdir()
    assert build_path(str(repo), "main") == build_path(repo.as_uri(), "main")
    assert build_path(str(repo), "main").startswith("/build/git/file%3A%2F%2F%2F")
    assert build_path(str(repo), "main").endswith("my%2520repo/main")


def args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["launch", *argv])


@pytest.fixture
async def gateway() -> AsyncIterator[Harness]:
    async for h in make_harness():
        yield h


async def test_launch_prints_the_session_url_and_shows_the_log(gateway: Harness) -> None:
    gateway.bus.on_publish = full_launch(gateway, session="s7")
    out, err = io.StringIO(), io.StringIO()
    url = str(gateway.client.make_url("")).rstrip("/")
    code = await launch(args("https://example.org/r.git", "--gateway", url), out, err)
    assert code == 0
    token = session_token(SECRET, "s7")
    assert out.getvalue() == f"http://gw.example:8585/user/s7/lab?token={token}\n"
    shown = err.getvalue()
    assert "step 0\nstep 1\nstep 2\n" in shown
    assert "-- launching" in shown or "Launching server" in shown
    [request] = gateway.bus.published
    assert isinstance(request, LaunchRequested) and request.provider == "git"


async def test_a_failed_launch_says_why_and_exits_1(gateway: Harness) -> None:
    async def fail(event: object) -> None:
        assert isinstance(event, LaunchRequested)
        await gateway.handlers.on_event(
            LaunchFailed(
                launch_id=event.launch_id,
                service="resolver",
                reason=FailureReason.REF_NOT_FOUND,
                message="Could not resolve ref nope",
            )
        )

    gateway.bus.on_publish = fail
    out, err = io.StringIO(), io.StringIO()
    url = str(gateway.client.make_url("")).rstrip("/")
    code = await launch(
        args("https://example.org/r.git", "--ref", "nope", "--gateway", url), out, err
    )
    assert code == 1 and out.getvalue() == ""
    assert "the launch failed (ref_not_found): Could not resolve ref nope" in err.getvalue()


async def test_unreachable_gateway_is_a_clear_error(unused_tcp_port: int) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await launch(
        args("o/r", "--provider", "gh", "--gateway", f"http://127.0.0.1:{unused_tcp_port}"),
        out,
        err,
    )
    assert code == 2
    assert "cannot reach Bindery" in err.getvalue() and "Traceback" not in err.getvalue()


async def test_a_dropped_stream_resumes_the_same_launch() -> None:
    """A server that drops the stream after two events; the client must come back with
    Last-Event-ID and never ask for a new launch."""
    seen_ids: list[str | None] = []

    async def build(request: web.Request) -> web.StreamResponse:
        seen_ids.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if len(seen_ids) == 1:
            for n, phase in enumerate(["waiting", "building"]):
                data = json.dumps({"phase": phase, "message": f"{phase}\n"})
                await response.write(f"id: abc:{n}\ndata: {data}\n\n".encode())
            request.transport.close()  # type: ignore[union-attr]
            return response
        ready = {"phase": "ready", "message": "up\n", "url": "http://gw/user/s/", "token": "t"}
        await response.write(f"id: abc:2\ndata: {json.dumps(ready)}\n\n".encode())
        return response

    app = web.Application()
    app.router.add_get("/build/{tail:.*}", build)
    server = TestServer(app)
    await server.start_server()
    try:
        out, err = io.StringIO(), io.StringIO()
        gateway = str(server.make_url("")).rstrip("/")
        code = await launch(args("o/r", "--provider", "gh", "--gateway", gateway), out, err)
    finally:
        await server.close()
    assert code == 0, err.getvalue()
    assert seen_ids == [None, "abc:1"]
    assert out.getvalue() == "http://gw/user/s/lab?token=t\n"
    assert "resuming the same launch" in err.getvalue()


async def test_console_script_runs(gateway: Harness) -> None:
    gateway.bus.on_publish = full_launch(gateway, session="s8")
    url = str(gateway.client.make_url("")).rstrip("/")
    bindery = Path(sys.executable).with_name("bindery")
    proc = await asyncio.create_subprocess_exec(
        str(bindery),
        "launch",
        "https://example.org/r.git",
        "--gateway",
        url,
        "--quiet",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().startswith("http://gw.example:8585/user/s8/lab?token=")
