"""`/user/<session>/...`: which session a request is for, whether it may reach it, and how it
goes there.

In: every request and websocket for a session. Out: the session's answer, carried by
forwarding.py; or, without going there, a redirect to the session's root, the page of a
session that is not running (ended.py), or a 403 (sessionauth.py).

A request goes through, in order: the route table (routes.py; right after a start it waits
for the routes of sessions that outlived the restart), the token check (sessionauth.py: a CORS
preflight carries no credentials by design, so it goes to Jupyter unchecked -- it can change
nothing), then forwarding as a websocket or as HTTP. What a person does, not what JupyterLab
polls (activity.py), touches the session's route on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from aiohttp import web

from bindery.gateway.activity import is_person_request
from bindery.gateway.ended import not_running
from bindery.gateway.fairness import Fairness
from bindery.gateway.forwarding import Forwarding
from bindery.gateway.routes import REBUILD_WAIT_SECONDS, RouteTable
from bindery.gateway.sessionauth import Credentials, admit
from bindery.gateway.sessionurls import SessionUrls


class Proxy:
    """Routes, admits and forwards requests for sessions."""

    def __init__(
        self,
        routes: RouteTable,
        credentials: Credentials,
        urls: SessionUrls,
        *,
        fairness: Fairness,
        client_of: Callable[[str | None, list[str]], Hashable | None],
        connect_timeout: float = 10.0,
        idle_timeout: float = 600.0,
        body_timeout: float = 30.0,
        secure_cookie: bool = False,
    ) -> None:
        self.routes = routes
        self.credentials = credentials
        self.urls = urls
        self.secure_cookie = secure_cookie
        self.forwarding = Forwarding(
            urls,
            fairness=fairness,
            client_of=client_of,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        session = request.match_info["session"]
        route = self.routes.get(session)
        if route is None:  # maybe a session that outlived a restart, its route not back yet
            route = await self.routes.find(session, REBUILD_WAIT_SECONDS)
        if route is None:
            home = self.urls.public_url if self.urls.subdomains else ""
            return not_running(request, session, self.routes.ended(session), home)
        if "tail" not in request.match_info:  # /user/<session> -> /user/<session>/
            query = request.raw_path.partition("?")[2]
            location = f"/user/{session}/" + (f"?{query}" if query else "")
            return web.Response(status=302, headers={"Location": location})
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return await self.forwarding.http(request, route)
        admission = admit(self.credentials, request, session, secure_cookie=self.secure_cookie)
        if admission.refusal is not None:
            return admission.refusal
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.forwarding.websocket(request, route)
        if is_person_request(request.method, request.match_info["tail"]):
            route.touch()
        return await self.forwarding.http(request, route, admission.set_cookie)

    async def close(self) -> None:
        """Shutting down: tell every browser websocket we are going away (1001)."""
        await self.forwarding.close()
