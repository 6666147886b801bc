"""Serves a package index that needs credentials to build steps without the credentials.

In: GET and HEAD requests from build steps (rootless, through slirp4netns, which reaches this
host's loopback at 10.0.2.2) and from the build process's own lookups on 127.0.0.1.
Out: the same request at the index's host with the index's credentials, and its answer, the
index's own address in simple-API pages replaced by the forwarder's, so pip and uv fetch the
files through it too.

Why: a build step runs the repository's code (postBuild, setup.py), which can read whatever
index URL its step was handed. Handed the forwarder's, it holds nothing; the credentials stay in
the builder process. scripts/isolation.sh lets the build user reach these ports of loopback,
and nothing else there.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

# slirp4netns's address of the host's loopback, with allow_host_loopback (scripts/install.sh).
STEP_HOST = "10.0.2.2"
# Answers whose text names the index's address: rewritten. Everything else (wheels, sdists)
# passes through as it comes.
_PAGES = ("text/html", "application/vnd.pypi.simple", "application/json")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


@dataclass(frozen=True)
class Index:
    """An index URL split into where it is and who may read it."""

    origin: str
    """scheme://host[:port] of the index, without credentials."""
    path: str
    user: str
    password: str

    @classmethod
    def parse(cls, url: str) -> Index:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return cls(
            origin=urlunsplit((parts.scheme, netloc, "", "", "")),
            path=parts.path or "/",
            user=parts.username or "",
            password=parts.password or "",
        )

    @property
    def needs_forwarding(self) -> bool:
        return bool(self.user or self.password)


class IndexForwarder:
    def __init__(self, index_url: str, port: int, ca_bundle: str = "") -> None:
        self.index = Index.parse(index_url)
        self.port = port
        self._ssl = ssl.create_default_context(cafile=ca_bundle or None)
        credentials = f"{self.index.user}:{self.index.password}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    def url_for(self, host: str) -> str:
        """The index URL as the forwarder serves it to whoever reaches it at ``host``."""
        return f"http://{host}:{self.port}{self.index.path}"

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        )
        app = web.Application()
        app.router.add_route("GET", "/{path:.*}", self._forward)
        app.router.add_route("HEAD", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        upstream = self.index.origin + request.rel_url.raw_path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range")}
        headers["Authorization"] = self._authorization
        async with self._http.request(
            request.method,
            upstream,
            headers=headers,
            ssl=self._ssl,
            allow_redirects=False,
        ) as answer:
            passed = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
            location = passed.get("Location", "")
            here = f"http://{request.host}"
            if location.startswith(self.index.origin):
                passed["Location"] = here + location[len(self.index.origin) :]
            if answer.content_type.startswith(_PAGES):
                body = await answer.read()
                text = body.decode(answer.charset or "utf-8", errors="replace")
                page = text.replace(self.index.origin, here).encode()
                return web.Response(status=answer.status, body=page, headers=passed)
            response = web.StreamResponse(status=answer.status, headers=passed)
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response
