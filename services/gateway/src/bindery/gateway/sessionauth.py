"""Who may use a session, and who may learn how: tokens, cookies, handoff codes, resume secrets.

In: the session secret, a request's credentials (the `Authorization` header, `?token=`, the
session's cookie) and, on a launch's stream, whether the client started the launch or holds its
resume secret. Out: the session's token check, the cookie a browser keeps for the session, a
one-time handoff code the launch page trades for that cookie on the session's origin, and the
resume secret that alone lets a reconnecting client get a launch's credentials again.

The proxy asks `admit` about every request for a session (defence in depth: a Jupyter
misconfigured to accept anything, or an image that starts its own server, still sits behind
it). A valid token in the query or the Authorization header earns an HttpOnly cookie scoped to
`/user/<session>/`, which JupyterLab's later requests and websockets carry; a request let in by
that cookie carries the token on to Jupyter in `Authorization` (`COOKIE_TOKEN`).

Everything is an HMAC of a name with the secret, so every gateway replica checks it locally:
- a session's token: HMAC(secret, session) (bindery.tokens), what Jupyter itself checks;
- a launch's resume secret: HMAC(secret, "resume:" + launch id). Launch ids are in logs, the
  event log, traces and the archive, so an id alone must never hand out a token;
- a handoff code: the session, an expiry and a nonce, signed. It is spent on its first use
  (per replica: codes live a minute, the launch page uses them at once) and is all that the
  browser's address bar and history ever see, never the token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookies import Morsel
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from bindery.gateway.urlpath import DEFAULT_URLPATH, safe_urlpath
from bindery.tokens import session_token

TOKEN_COOKIE = "bindery-session-token"  # noqa: S105 (a cookie name)
# A request the gateway let in by its cookie carries the token to Jupyter in `Authorization`:
# Jupyter checks it on every request (it never saw the token in a URL, so it set no login cookie
# of its own), and a request authenticated by token needs no XSRF cookie, so a cookie a sibling
# origin tossed for a parent domain cannot break it either.
COOKIE_TOKEN = web.RequestKey("cookie_token", str)
HANDOFF_SECONDS = 60
# Spent codes remembered until they expire: far more than launches a replica sees a minute.
_SPENT_REMEMBERED = 100_000
_COOKIE_PAIR = re.compile(r"\s*([^=;\s]+)\s*=\s*([^;]*)")


def _mac(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def token_cookie(session: str, token: str, secure: bool) -> str:
    """The Set-Cookie value for a session's token, formatted once per session (API clients
    that send `Authorization` on every request and keep no cookie get it on every answer).
    No Domain: on a session's own origin the cookie is that host's alone."""
    morsel: Morsel[str] = Morsel()
    morsel.set(TOKEN_COOKIE, token, token)
    morsel["path"] = f"/user/{session}/"
    morsel["samesite"] = "Lax"
    morsel["httponly"] = True  # type: ignore[assignment]  # Morsel flags take a bool
    if secure:
        morsel["secure"] = True  # type: ignore[assignment]
    return morsel.OutputString()


def presented_tokens(
    authorization: str, query_token: str, cookie_values: list[str]
) -> tuple[list[str], bool]:
    """The tokens a request carries and whether they came from cookies. Every cookie of the
    session's name counts: a page on a sibling origin can set one more for a parent domain
    (cookie tossing), which must not lock the owner out."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() in ("token", "bearer") and credentials.strip():
        return [credentials.strip()], False
    if query_token:
        return [query_token], False
    return cookie_values, True


def session_cookies(cookie_headers: Iterable[str]) -> list[str]:
    """The values of every session-token cookie in a request's Cookie headers."""
    return [
        value
        for header in cookie_headers
        for name, value in _COOKIE_PAIR.findall(header)
        if name == TOKEN_COOKIE
    ]


def from_own_page(origin: str | None, host: str) -> bool:
    """Whether a request comes from a page of the origin it is sent to (or from no page: a
    navigation, a script outside a browser). Browsers send Origin with every websocket
    handshake and every cross-origin or writing request, and sibling session origins are
    same-site, so they get a session's SameSite=Lax cookie: that cookie must count only for
    the session's own pages, or another session's page could open its terminals and kernels.
    Pages elsewhere (Thebe) send the token itself and are checked by Jupyter's allow_origin."""
    return origin is None or urlsplit(origin).netloc.lower() == host.lower()


def not_from_own_page() -> web.Response:
    return web.json_response(
        {
            "message": "A session's cookie counts only on the session's own pages: a page "
            "elsewhere must send the token (`Authorization: token <token>`)."
        },
        status=403,
    )


def forbidden() -> web.Response:
    return web.json_response(
        {
            "message": "This session needs its token: open it from the link its launch page "
            "gave, or send `Authorization: token <token>`."
        },
        status=403,
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` decided about a request for a session."""

    refusal: web.Response | None = None
    """The answer instead of the session's (403), or None: the request goes on."""
    set_cookie: str | None = None
    """The Set-Cookie the session's answer gets: a token that came in the query or the
    Authorization header becomes the browser's cookie (None: it has it, or came with it)."""
    cookie_token: str | None = None
    """The token the request goes on to Jupyter with (`COOKIE_TOKEN`): it came in by cookie."""


ADMITTED = Admission()


def admission(
    credentials: Credentials,
    session: str,
    *,
    authorization: str,
    query_token: str,
    cookie_headers: Iterable[str],
    origin: str | None,
    host: str,
    secure_cookie: bool,
) -> Admission:
    """Whether a request with these credentials may reach `session`: it carries the session's
    token, and a token from the cookie counts only on the session's own pages
    (`from_own_page`)."""
    cookies = session_cookies(cookie_headers)
    tokens, from_cookie = presented_tokens(authorization, query_token, cookies)
    if not credentials.token_matches(session, tokens):
        return Admission(refusal=forbidden())
    token = credentials.token(session)
    if from_cookie:
        if not from_own_page(origin, host):
            return Admission(refusal=not_from_own_page())
        return Admission(cookie_token=token)
    if token in cookies:
        return ADMITTED
    return Admission(set_cookie=token_cookie(session, token, secure_cookie))


def admit(
    credentials: Credentials, request: web.Request, session: str, *, secure_cookie: bool
) -> Admission:
    """`admission` of an aiohttp request; one let in by its cookie gets the token on to
    Jupyter (`COOKIE_TOKEN`)."""
    headers = request.headers
    decided = admission(
        credentials,
        session,
        authorization=headers.get("Authorization", ""),
        query_token=request.query.get("token", ""),
        cookie_headers=headers.getall("Cookie", []),
        origin=headers.get("Origin"),
        host=request.host,
        secure_cookie=secure_cookie,
    )
    if decided.cookie_token is not None:
        request[COOKIE_TOKEN] = decided.cookie_token
    return decided


class Credentials:
    """Mints and checks what the secret vouches for (tokens, resume secrets, handoff codes)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        # HMAC once per session, not per request: tokens are a pure function of the name.
        self.token = functools.lru_cache(maxsize=4096)(functools.partial(session_token, secret))
        self._spent: OrderedDict[str, float] = OrderedDict()

    def token_matches(self, session: str, presented: list[str]) -> bool:
        expected = self.token(session).encode()
        # Every value is compared, so the time taken says nothing of which one matched.
        return sum(hmac.compare_digest(value.encode(), expected) for value in presented) > 0

    def resume_secret(self, launch_id: str) -> str:
        return _mac(self._secret, f"resume:{launch_id}")

    def resumes(self, launch_id: str, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(
            presented.encode(), self.resume_secret(launch_id).encode()
        )

    def handoff(self, session: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + HANDOFF_SECONDS)
        nonce = secrets.token_hex(8)
        return f"{expires}.{nonce}.{_mac(self._secret, f'handoff:{session}:{expires}:{nonce}')}"

    def redeem(self, session: str, code: str, now: float | None = None) -> bool:
        """Whether `code` is a live handoff code for `session`; spends it."""
        now = time.time() if now is None else now
        expires, _, rest = code.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expires.isdigit() or int(expires) < now or code in self._spent:
            return False
        if not hmac.compare_digest(
            mac.encode(), _mac(self._secret, f"handoff:{session}:{expires}:{nonce}").encode()
        ):
            return False
        self._spent[code] = int(expires)
        while self._spent and (
            len(self._spent) > _SPENT_REMEMBERED or next(iter(self._spent.values())) < now
        ):
            self._spent.popitem(last=False)
        return True


def handoff_handler(credentials: Credentials, secure_cookie: bool) -> Handler:
    """`GET /user/<session>/.bindery/handoff?code=...&next=<urlpath>`: a live code becomes the
    session's cookie on this origin and the browser goes on to `next` inside the session; the
    address bar keeps neither code nor token."""

    async def handoff(request: web.Request) -> web.StreamResponse:
        session = request.match_info["session"]
        if not credentials.redeem(session, request.query.get("code", "")):
            return web.json_response(
                {
                    "message": "This link into the session was used already or has expired. "
                    "Open the session again from the page that launched it."
                },
                status=403,
            )
        urlpath = safe_urlpath(request.query.get("next")) or DEFAULT_URLPATH
        token = credentials.token(session)
        return web.Response(
            status=303,
            headers={
                "Location": f"/user/{session}/{urlpath}",
                "Set-Cookie": token_cookie(session, token, secure_cookie),
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    return handoff
