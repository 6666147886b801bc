"""HTTP GETs to provider APIs, bounded in time and size, with ETag revalidation.

In: an API URL built from quoted components, and the provider's name for messages. Out: a
`Reply` (status, JSON body, headers) for answers the caller interprets (200, 3xx when asked,
404, 410, 422, ...), or `ResolveError` for what no caller can fix: no answer in time, a server
error, a rate limit (with when to try again), a body that is not JSON. Redirects are followed
only within the same scheme and host, so an API can never send the resolver somewhere else.
Answers carrying an ETag are kept; the next request for the same URL sends If-None-Match and a
304 reuses the kept body (GitHub does not count 304s against its rate limit).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog
from yarl import URL

from bindery.events import FailureReason
from bindery.resolver.errors import ResolveError
from bindery.resolver.hosts import GuardedResolver, HostPolicy

log = structlog.get_logger("bindery.resolver.api")

MAX_BODY = 16 * 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Reply:
    status: int
    data: Any
    headers: Mapping[str, str]
    url: str

    def location(self) -> str | None:
        target = self.headers.get("Location")
        return urljoin(self.url, target) if target else None


class ApiClient:
    def __init__(self, policy: HostPolicy, timeout: float, etag_cache_size: int = 4096) -> None:
        self._timeout = timeout
        self._policy = policy
        self._etags: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._etag_cache_size = etag_cache_size
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds a session to its loop).
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=GuardedResolver(self._policy), limit=64),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "Bindery (BinderHub-compatible launcher)"},
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def get(
        self,
        url: str,
        *,
        source: str,
        headers: Mapping[str, str] | None = None,
        revalidate: bool = False,
        max_redirects: int = 3,
    ) -> Reply:
        """GET `url` (already quoted). `revalidate` keeps ETags; `max_redirects=0` returns 3xx."""
        origin = urlsplit(url)
        for _ in range(max_redirects + 1):
            reply = await self._get_once(url, source, headers or {}, revalidate)
            target = reply.location() if reply.status in _REDIRECTS else None
            if target is None or max_redirects == 0:
                return reply
            moved = urlsplit(target)
            if (moved.scheme, moved.netloc) != (origin.scheme, origin.netloc):
                raise ResolveError(
                    f"{source} redirected to another host ({moved.netloc}); not following",
                    FailureReason.REPO_UNREACHABLE,
                )
            url = target
        raise ResolveError(f"{source} redirected too many times", FailureReason.REPO_UNREACHABLE)

    async def _get_once(
        self, url: str, source: str, headers: Mapping[str, str], revalidate: bool
    ) -> Reply:
        request_headers = {"Accept": "application/json", **headers}
        cached = self._etags.get(url) if revalidate else None
        if cached is not None:
            request_headers["If-None-Match"] = cached[0]
        try:
            async with self._session().get(
                URL(url, encoded=True), headers=request_headers, allow_redirects=False
            ) as resp:
                status, reply_headers = resp.status, resp.headers
                body = await resp.content.read(MAX_BODY + 1) if 200 <= status < 300 else b""
        except TimeoutError:
            raise ResolveError(
                f"{source} did not answer within {self._timeout:.0f} s; try again later",
                FailureReason.REPO_UNREACHABLE,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ResolveError(
                f"{source} could not be reached ({type(exc).__name__}); try again later",
                FailureReason.REPO_UNREACHABLE,
            ) from exc
        _note_rate_limit(source, reply_headers)
        if status == 304 and cached is not None:
            self._etags.move_to_end(url)
            return Reply(200, cached[1], reply_headers, url)
        if _rate_limited(status, reply_headers):
            raise ResolveError(
                f"{source} is limiting how often Bindery may ask it (rate limit); "
                f"try again in {_minutes_until_reset(reply_headers)} minutes",
                FailureReason.REPO_UNREACHABLE,
            )
        if status >= 500:
            raise ResolveError(
                f"{source} is having trouble (it answered {status}); try again later",
                FailureReason.REPO_UNREACHABLE,
            )
        data = _json(body, source) if 200 <= status < 300 else None
        etag = reply_headers.get("ETag")
        if revalidate and status == 200 and etag:
            self._etags[url] = (etag, data)
            self._etags.move_to_end(url)
            while len(self._etags) > self._etag_cache_size:
                self._etags.popitem(last=False)
        return Reply(status, data, reply_headers, url)


def _json(body: bytes, source: str) -> Any:
    if len(body) > MAX_BODY:
        raise ResolveError(f"{source} answered with too much data", FailureReason.REPO_UNREACHABLE)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ResolveError(
            f"{source} answered with something that is not JSON", FailureReason.REPO_UNREACHABLE
        ) from None


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    return next((headers[n] for n in names if n in headers), None)


def _rate_limited(status: int, headers: Mapping[str, str]) -> bool:
    if status == 429:
        return True
    # GitHub answers 403 both for "forbidden" and for limits; the headers tell them apart.
    remaining = _header(headers, "X-RateLimit-Remaining", "RateLimit-Remaining")
    return status == 403 and (remaining == "0" or "Retry-After" in headers)


def _minutes_until_reset(headers: Mapping[str, str]) -> int:
    seconds = 60.0
    retry_after = headers.get("Retry-After", "")
    reset = _header(headers, "X-RateLimit-Reset", "RateLimit-Reset") or ""
    if retry_after.isdigit():
        seconds = float(retry_after)
    elif reset.isdigit():
        value = float(reset)
        # An epoch (GitHub, GitLab's RateLimit-Reset) or seconds from now (IETF draft).
        seconds = value - time.time() if value > 1_000_000_000 else value
    return max(1, math.ceil(seconds / 60))


def _note_rate_limit(source: str, headers: Mapping[str, str]) -> None:
    remaining = _header(headers, "X-RateLimit-Remaining", "RateLimit-Remaining")
    limit = _header(headers, "X-RateLimit-Limit", "RateLimit-Limit")
    if not (remaining and limit and remaining.isdigit() and limit.isdigit()):
        return
    if int(remaining) < int(limit) * 0.2:
        log.warning("provider.rate_limit_low", source=source, remaining=int(remaining))
