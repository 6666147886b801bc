"""Where sessions are served: each on an origin of its own, or under the gateway's.

In: the public URL, `BINDERY_SESSIONS_HOST`, and each request's Host. Out: a session's URL, which
session (if any) a Host names, the middleware that keeps the two kinds of origin apart, and the
confinement of what a session's answers may claim.

- **Subdomain mode** (a sessions host is set, e.g. `sessions.example.org` with wildcard DNS, or
  `localhost:8585`, which browsers resolve with every subdomain to loopback): session `s` is at
  `<scheme>://s.<sessions host>/user/s/`. Its pages, cookies, service workers and storage are its
  origin's alone (JupyterHub's answer to the same problem). The gateway's pages are never served
  on a session's origin and no session on the gateway's.
- **Path mode** (no sessions host): every session is under `<public url>/user/s/`, one origin for
  all. The proxy confines what a session may claim there: `Service-Worker-Allowed` and cookie
  paths are kept within the session's prefix. What one origin cannot defend is in
  docs/security.md.

In both modes a session's `Set-Cookie` loses any Domain attribute: a session sets cookies for its
own host only, never for a parent domain its siblings share.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict

_SESSION_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class SessionUrls:
    def __init__(self, public_url: str, sessions_host: str = "") -> None:
        self.public_url = public_url.rstrip("/")
        self.scheme = urlsplit(self.public_url).scheme or "http"
        self.sessions_host = sessions_host.strip().lower().lstrip(".")
        self.subdomains = bool(self.sessions_host)
        self._suffix = "." + self.sessions_host

    def origin(self, session: str) -> str:
        """The origin `session`'s pages belong to."""
        if self.subdomains:
            return f"{self.scheme}://{session}.{self.sessions_host}"
        return self.public_url

    def url(self, session: str) -> str:
        return f"{self.origin(session)}/user/{session}/"

    def session_of_host(self, host: str | None) -> str | None:
        """The session a Host header names in subdomain mode; None for any other host."""
        if not self.subdomains or not host:
            return None
        host = host.lower()
        if not host.endswith(self._suffix):
            return None
        label = host[: -len(self._suffix)]
        return label if _SESSION_LABEL.match(label) else None

    def confine(self, session: str, headers: CIMultiDict[str]) -> None:
        """Keep a session's answer from claiming more than its own place (changes `headers`)."""
        if "Set-Cookie" in headers:
            cookies = [self._own_cookie(session, c) for c in headers.getall("Set-Cookie")]
            del headers["Set-Cookie"]
            for cookie in cookies:
                headers.add("Set-Cookie", cookie)
        if not self.subdomains and "Service-Worker-Allowed" in headers:
            prefix = f"/user/{session}/"
            if not headers["Service-Worker-Allowed"].startswith(prefix):
                headers["Service-Worker-Allowed"] = prefix

    def _own_cookie(self, session: str, cookie: str) -> str:
        name_value, *attributes = cookie.split(";")
        prefix = f"/user/{session}/"
        kept = []
        for attribute in attributes:
            key, _, value = attribute.strip().partition("=")
            if key.lower() == "domain":
                continue
            if key.lower() == "path" and not self.subdomains:
                path = value.strip()
                if not (path + "/").startswith(prefix):
                    continue  # replaced below: a path outside the session is the session's
            kept.append(attribute.strip())
        if not self.subdomains and not any(a.lower().startswith("path=") for a in kept):
            kept.append(f"Path={prefix}")
        return "; ".join([name_value.strip(), *kept])

    def middleware(self) -> Middleware:
        """Session origins serve their session and nothing else; in subdomain mode the gateway's
        origin sends `/user/...` on to the session's own origin."""

        @web.middleware
        async def separate_origins(request: web.Request, handler: Handler) -> web.StreamResponse:
            session = self.session_of_host(request.host)
            if session is not None:
                prefix = f"/user/{session}"
                if request.path == "/":
                    raise web.HTTPFound(f"{prefix}/")
                if request.path != prefix and not request.path.startswith(prefix + "/"):
                    return web.json_response(
                        {
                            "message": f"This address serves the session {session} only: "
                            f"Bindery itself is at {self.public_url}/."
                        },
                        status=404,
                    )
            elif self.subdomains and request.path.startswith("/user/"):
                name = request.path.split("/")[2]
                if _SESSION_LABEL.match(name):
                    # 307: the method and body go on too (an API client's POST still works).
                    raise web.HTTPTemporaryRedirect(self.origin(name) + request.raw_path)
            return await handler(request)

        return separate_origins
