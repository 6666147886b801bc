"""Name resolution as browsers do it for `localhost`: every name under it is loopback.

Sessions live on `<session>.localhost:<port>` under the test stack (as under `make up`).
Chromium resolves those names itself; this machine's resolver does not, so the tests' HTTP
client resolves them the same way, and everything else as usual.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult


def is_localhost(host: str) -> bool:
    host = host.rstrip(".").lower()
    return host == "localhost" or host.endswith(".localhost")


class LocalhostResolver(AbstractResolver):
    def __init__(self) -> None:
        self._default = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if is_localhost(host):
            return [
                ResolveResult(
                    hostname=host,
                    host="127.0.0.1",
                    port=port,
                    family=socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        return await self._default.resolve(host, port, family)

    async def close(self) -> None:
        await self._default.close()


def client_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An aiohttp client that reaches `*.localhost` as a browser does, and keeps no cookies:
    like an API client, each request carries the credentials its test gives it."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=LocalhostResolver()),
        cookie_jar=aiohttp.DummyCookieJar(),
        **kwargs,
    )
