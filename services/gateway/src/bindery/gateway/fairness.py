"""Fair shares of the proxy: what each session and each client may hold at once, so that no
single one can stall the gateway for the others.

In: for every proxied request or websocket, its session and its client (abuse.py's
`AbuseGuard.client`: an IPv4 address or an IPv6 network). Out: a `Held` once it fits every
share it belongs to (its session's, its client's and the whole gateway's), given back with
`release()` when the request or websocket ends; or `Refused`, with a message a person can act on
(the proxy answers it as a 503).

Three things are counted in each share:
- requests: proxied HTTP requests in the gateway, served or waiting. Over the limit a request
  is refused at once, so the queue itself is bounded.
- websockets: open websockets. Over the limit a new one is refused at once: websockets live for
  hours, waiting for one to close is pointless.
- connections: connections to sessions, each served HTTP request and each websocket holding
  one. Over the limit a request waits for one to be given back, up to `wait` seconds, then is
  refused. The gateway's own share has a connection limit only (`proxy_max_connections`).

A session or client that exhausts its share is refused on its own; the others' shares are
untouched, so their requests never wait behind it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Hashable
from dataclasses import dataclass

from aiohttp import web

from bindery.gateway.settings import GatewaySettings

_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class Limits:
    requests: int = _NO_LIMIT
    websockets: int = _NO_LIMIT
    connections: int = _NO_LIMIT


class Refused(Exception):
    """A share is exhausted; the message says which, and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Share:
    __slots__ = (
        "connections",
        "key",
        "limits",
        "requests",
        "table",
        "waiters",
        "websockets",
        "who",
    )

    def __init__(
        self, key: Hashable, limits: Limits, who: str, table: dict[Hashable, _Share] | None
    ) -> None:
        self.key = key
        self.limits = limits
        self.who = who
        """How a message names this share ("This session", "Your network ...")."""
        self.table = table
        """Where it is kept while in use (None: the gateway's, kept always)."""
        self.requests = 0
        self.websockets = 0
        self.connections = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        """Requests waiting for one of this share's connections, first come first."""

    def wake(self) -> None:
        """A connection of this share came back: the first live waiter tries again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def give_up(self, waiter: asyncio.Future[None]) -> None:
        """A waiter leaves (its time ran out, or its browser left)."""
        if waiter.done():  # woken just as it left: the turn passes on
            self.wake()
        else:
            waiter.cancel()
            self.waiters.remove(waiter)

    def forget_if_unused(self) -> None:
        """A share holding nothing is dropped: the next request starts a new one at zero."""
        if self.table is not None and not (
            self.requests or self.websockets or self.connections or self.waiters
        ):
            self.table.pop(self.key, None)


class Held:
    """What one request or websocket holds in its shares until `release()`."""

    __slots__ = ("_shares", "_wait", "_websocket", "connected")

    def __init__(self, shares: tuple[_Share, ...], wait: float, websocket: bool) -> None:
        self._shares = shares
        self._wait = wait
        self._websocket = websocket
        self.connected = False

    def take_connection(self) -> bool:
        """Take a connection in every share if each has one free now; whether it did."""
        shares = self._shares
        if any(s.connections >= s.limits.connections for s in shares):
            return False
        for share in shares:
            share.connections += 1
        self.connected = True
        return True

    async def connect(self) -> None:
        """Take a connection in every share, waiting up to `wait` seconds for one to come back
        where there is none; `Refused` if none did."""
        deadline = time.monotonic() + self._wait
        while True:
            if self.take_connection():
                return
            full = next(s for s in self._shares if s.connections >= s.limits.connections)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Refused(_busy(full, self._wait))
            waiter = asyncio.get_running_loop().create_future()
            full.waiters.append(waiter)
            try:
                async with asyncio.timeout(left):
                    await waiter
            except TimeoutError:
                full.give_up(waiter)  # the next round finds the deadline passed (or a place)
            except BaseException:
                full.give_up(waiter)
                raise

    def release(self) -> None:
        """The request or websocket ended: everything it held goes back (once)."""
        shares, self._shares = self._shares, ()
        for share in shares:
            if self._websocket:
                share.websockets -= 1
            else:
                share.requests -= 1
            if self.connected:
                share.connections -= 1
                share.wake()
            share.forget_if_unused()


# What is counted and what a person over the limit can do about it, for requests and websockets.
_TOO_MANY = {
    False: (
        "requests in progress",
        "wait for some to finish (or close some browser tabs)",
    ),
    True: (
        "websockets open",
        "close some notebooks, consoles, terminals or browser tabs",
    ),
}


class Fairness:
    """The shares of every session and client with something in flight, and the gateway's."""

    def __init__(
        self, *, session: Limits, client: Limits, gateway_connections: int, wait: float
    ) -> None:
        self._session_limits = session
        self._client_limits = client
        self._wait = wait
        self._gateway = _Share(None, Limits(connections=gateway_connections), "", None)
        self._sessions: dict[Hashable, _Share] = {}
        self._clients: dict[Hashable, _Share] = {}

    @classmethod
    def of(cls, settings: GatewaySettings) -> Fairness:
        return cls(
            session=Limits(
                settings.proxy_session_requests,
                settings.proxy_session_websockets,
                settings.proxy_session_connections,
            ),
            client=Limits(
                settings.proxy_client_requests,
                settings.proxy_client_websockets,
                settings.proxy_client_connections,
            ),
            gateway_connections=settings.proxy_max_connections,
            wait=settings.proxy_queue_wait,
        )

    def request(self, session: str, client: Hashable | None) -> Held:
        """An HTTP request enters; `Refused` at once if its session or client has too many."""
        return self._enter(session, client, websocket=False)

    def websocket(self, session: str, client: Hashable | None) -> Held:
        """A websocket opens; `Refused` at once if its session or client has too many."""
        return self._enter(session, client, websocket=True)

    def _enter(self, session: str, client: Hashable | None, *, websocket: bool) -> Held:
        shares = self._shares(session, client)
        for share in shares:
            held, limit = (
                (share.websockets, share.limits.websockets)
                if websocket
                else (share.requests, share.limits.requests)
            )
            if held >= limit:
                _forget_unused(shares)
                what, advice = _TOO_MANY[websocket]
                raise Refused(
                    f"{share.who} has {limit} {what} through this Bindery, its limit: {advice}, "
                    "then retry."
                )
        for share in shares:
            if websocket:
                share.websockets += 1
            else:
                share.requests += 1
        return Held(shares, self._wait, websocket=websocket)

    def _shares(self, session: str, client: Hashable | None) -> tuple[_Share, ...]:
        own = self._sessions.get(session)
        if own is None:
            own = _Share(session, self._session_limits, "This session", self._sessions)
            self._sessions[session] = own
        if client is None:  # no IP address (a unix socket): counted by its session alone
            return (own, self._gateway)
        theirs = self._clients.get(client)
        if theirs is None:
            who = f"Your network ({client})"
            theirs = self._clients[client] = _Share(client, self._client_limits, who, self._clients)
        return (own, theirs, self._gateway)


def refused(exc: Refused) -> web.Response:
    """The 503 a refused request gets; retrying in a few seconds is what it can do."""
    return web.json_response({"message": exc.message}, status=503, headers={"Retry-After": "5"})


def _forget_unused(shares: tuple[_Share, ...]) -> None:
    for share in shares:
        share.forget_if_unused()


def _busy(share: _Share, wait: float) -> str:
    if share.table is None:
        return (
            "This Bindery is carrying as many connections to sessions as it can "
            f"({share.limits.connections}) and none came free within {wait:g} s: "
            "try again in a minute."
        )
    return (
        f"{share.who} holds {share.limits.connections} connections to sessions, its limit, and "
        f"none came free within {wait:g} s: something keeps requests open. Close some browser "
        "tabs or stop what keeps them busy, then retry."
    )
