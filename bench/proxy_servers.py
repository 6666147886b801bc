"""Processes the proxy and abuse benchmarks start: a stand-in Jupyter (HTTP + websocket echo,
and a long poll that never answers) and the gateway in front of it, served as
`python -m bindery.gateway` serves it (fastlane.serve, default settings), each alone in its
own process like in production.

    python bench/proxy_servers.py upstream <port>
    python bench/proxy_servers.py gateway <port> <upstream port> <secret> [<session>,...]
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

BODY = b"x" * 1024  # a small JSON-sized answer, like Jupyter's /api/contents for a directory


async def echo_http(_request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def hold(_request: web.Request) -> web.Response:
    """A long poll whose answer never comes: what a client holding connections asks for."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def echo_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def upstream(port: int) -> None:
    app = web.Application()
    app.router.add_get("/user/{session}/ws", echo_ws)
    app.router.add_get("/user/{session}/hold", hold)
    app.router.add_get("/user/{session}/{tail:.*}", echo_http)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class NoBus:
    """The proxy never waits on the broker; activity flushes go nowhere here."""

    connected = True

    async def publish(self, event: object, headers: dict[str, str] | None = None) -> None:
        return None


async def gateway(port: int, upstream_port: int, secret: str, sessions: list[str]) -> None:
    from bindery import logs
    from bindery.gateway import fastlane
    from bindery.gateway.app import create_app
    from bindery.gateway.deps import Gateway
    from bindery.gateway.settings import GatewaySettings

    logs.configure("gateway", "json", "warning")
    settings = GatewaySettings(
        session_secret=secret,
        public_url=f"http://127.0.0.1:{port}",
        client_log_dir="",
        launch_rate_per_minute=0,
    )
    gw = Gateway.create(settings, NoBus())
    for session in sessions:
        gw.routes.add(session, f"http://127.0.0.1:{upstream_port}", "bench")
    await fastlane.serve(create_app(gw), settings, "127.0.0.1", port)
    await asyncio.Event().wait()  # until terminated


if __name__ == "__main__":
    import uvloop

    # The gateway runs on uvloop in production (its __main__); the stand-in Jupyter too, so the
    # upstream is never what limits either proxy.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    role, *rest = sys.argv[1:]
    if role == "upstream":
        upstream(int(rest[0]))
    else:
        sessions = rest[3].split(",") if len(rest) > 3 else ["s1"]
        asyncio.run(gateway(int(rest[0]), int(rest[1]), rest[2], sessions))
