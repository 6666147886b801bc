"""From inside a real session (code run in its kernel): the broker, the registry, a service port,
another session and the cloud metadata address give no answer; the package index does (issue 5).

Every check sends the real protocol and reads the reply, because off-machine TCP is accepted by
an intercepting proxy here: a successful connect() would prove nothing. Controls from the host
show each target really answers there, so a missing answer inside the session means isolation.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bindery.events import PodReady
from tests.integration.scheduler.conftest import Harness, MakeScheduler, container_ip
from tests.support.kernel import run_code

PROBE = r"""
import json, socket, ssl, urllib.request

def probe(host, port, payload):
    sock = socket.socket()
    sock.settimeout(5)
    try:
        sock.connect((host, port))
        sock.sendall(payload.encode("latin-1"))
        return sock.recv(512).decode("latin-1")
    except OSError as exc:
        return "error: " + type(exc).__name__
    finally:
        sock.close()

def pypi():
    # The proxy re-signs TLS with a CA the session image does not carry: skip verification,
    # and check the answer is PyPI's page for `six`.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen("https://pypi.org/simple/six/", context=context, timeout=60) as r:
        return r.status, "six-1.16.0" in r.read().decode()
"""
AMQP = "AMQP\x00\x00\x09\x01"
CONNECTION_START = "\x00\x0a\x00\x0a"  # class 10 (connection), method 10 (start)
MARKER = "bindery-isolation-probe"


def host_addresses() -> list[str]:
    """Every IPv4 address of this host a session could aim at, the bridge gateway included."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line]


def run_probe(calls: dict[str, tuple[str, int, str]]) -> dict[str, str]:
    scope: dict[str, object] = {}
    exec(PROBE, scope)
    return {name: scope["probe"](*args) for name, args in calls.items()}  # type: ignore[operator]


@pytest.fixture
async def open_service() -> AsyncIterator[int]:
    """A service bound to every address (the mistake isolation must survive), with /health."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text=MARKER)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_a_session_reaches_the_package_index_and_nothing_of_ours(
    make_scheduler: MakeScheduler,
    session_image: str,
    http: aiohttp.ClientSession,
    open_service: int,
) -> None:
    h: Harness = await make_scheduler()
    for launch in ("I1", "I2"):
        await h.scheduler.launch(h.order(launch, session_image))
    me, other = h.of(PodReady)
    url, token = f"{me.target}/user/{me.session}/", h.scheduler.token(me.session)
    other_ip = container_ip(other.node, other.session)
    other_status = f"GET /user/{other.session}/api/status HTTP/1.0\r\n\r\n"

    calls: dict[str, tuple[str, int, str]] = {
        "other session": (other_ip, 8888, other_status),
        "metadata": ("169.254.169.254", 80, "GET /latest/meta-data/ HTTP/1.0\r\n\r\n"),
    }
    for address in host_addresses():
        calls[f"broker@{address}"] = (address, 5672, AMQP)
        calls[f"registry@{address}"] = (address, 5000, "GET /v2/ HTTP/1.0\r\n\r\n")
        calls[f"service@{address}"] = (address, open_service, "GET /health HTTP/1.0\r\n\r\n")

    # In a thread: the open service answers from this test's own event loop.
    controls = await asyncio.to_thread(
        run_probe,
        {
            "broker": ("127.0.0.1", 5672, AMQP),
            "registry": ("127.0.0.1", 5000, "GET /v2/ HTTP/1.0\r\n\r\n"),
            "service": (host_addresses()[0], open_service, "GET /health HTTP/1.0\r\n\r\n"),
        },
    )
    assert CONNECTION_START in controls["broker"]
    assert "Docker-Distribution-Api-Version" in controls["registry"]
    assert MARKER in controls["service"]
    async with http.get(f"{other.target}/user/{other.session}/api/status") as resp:
        assert resp.headers.get("Server", "").startswith("TornadoServer"), "the control answers"

    code = PROBE + f"\nprint(json.dumps({{n: probe(*a) for n, a in {calls!r}.items()}}))"
    code += "\nprint(json.dumps(pypi()))"
    outcome = await run_code(http, url, token, code)
    assert outcome.ended == "idle", outcome
    answers_line, pypi_line = outcome.output.strip().splitlines()[-2:]
    answers = json.loads(answers_line)
    assert set(answers) == set(calls)
    for name, answer in answers.items():
        assert answer.startswith("error"), f"{name} answered from inside a session: {answer!r}"
    assert json.loads(pypi_line) == [200, True], "the package index must stay reachable"
