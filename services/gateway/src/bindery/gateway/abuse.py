"""Abuse handling: banned networks, a per-address launch rate limit, and a 30-day address log.

In: each request's client address (from the socket, or from `X-Forwarded-For` when the socket is
a trusted proxy). Out: a refusal (403 banned, 429 too many launches) before any work is done, and
one JSON line per new launch (time, address, launch id, provider, spec) in a file per UTC day;
files older than the retention are deleted, so addresses are kept for abuse handling only as long
as mybinder.org's published policy says (30 days). Addresses appear nowhere else: the access log
does not carry them.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

log = structlog.get_logger("bindery.gateway.abuse")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOG_PREFIX = "launches-"


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDRs (or single addresses); a bad one is a configuration error named in the message."""
    networks: list[Network] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network or address: {value!r}") from exc
    return networks


def _address(value: str | None) -> Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value.strip().split("%", 1)[0])
    except ValueError:
        return None


def _within(address: Address, networks: list[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(request: web.Request, trusted_proxies: list[Network]) -> Address | None:
    """The client's address: the socket peer, unless that is a trusted proxy, in which case the
    right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left
    are whatever the client chose to send)."""
    peer = _address(request.remote)
    if peer is None or not _within(peer, trusted_proxies):
        return peer
    hops = [h for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return peer
        if not _within(address, trusted_proxies):
            return address
    return peer


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per address: `burst` launches at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, burst: int, max_addresses: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_addresses = max_addresses
        self._buckets: dict[Address, _Bucket] = {}

    def allow(self, address: Address, now: float | None = None) -> float:
        """0 if a launch is allowed now (and takes a token); else seconds until one is."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._max_addresses:
                self._forget_full(now)
            bucket = self._buckets[address] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _forget_full(self, now: float) -> None:
        """Addresses whose bucket has refilled carry no state worth keeping."""
        for address, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self._rate >= self._burst:
                del self._buckets[address]


class AddressLog:
    """Launch records with client addresses, one JSON-lines file per UTC day, pruned by age."""

    def __init__(self, directory: Path, retention_days: int) -> None:
        self._directory = directory
        self._retention = timedelta(days=retention_days)
        self._day: date | None = None
        self._file: IO[str] | None = None

    def write(self, record: dict[str, str], now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        if now.date() != self._day:
            self._rotate(now)
        assert self._file is not None
        self._file.write(json.dumps({"time": now.isoformat(), **record}) + "\n")
        self._file.flush()

    def _rotate(self, now: datetime) -> None:
        self.close()
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prune(now)
        self._day = now.date()
        path = self._directory / f"{_LOG_PREFIX}{self._day.isoformat()}.jsonl"
        self._file = path.open("a", encoding="utf-8")

    def prune(self, now: datetime | None = None) -> list[Path]:
        """Delete day files older than the retention; returns what it deleted."""
        oldest_kept = ((now or datetime.now(UTC)) - self._retention).date()
        deleted = []
        for path in self._directory.glob(f"{_LOG_PREFIX}*.jsonl"):
            try:
                day = date.fromisoformat(path.stem.removeprefix(_LOG_PREFIX))
            except ValueError:
                continue
            if day < oldest_kept:
                path.unlink(missing_ok=True)
                deleted.append(path)
        return deleted

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class AbuseGuard:
    def __init__(
        self,
        *,
        banned: list[Network],
        trusted_proxies: list[Network],
        limiter: RateLimiter,
        address_log: AddressLog | None,
    ) -> None:
        self._banned = banned
        self._trusted = trusted_proxies
        self._limiter = limiter
        self._log = address_log

    def address(self, request: web.Request) -> Address | None:
        return client_address(request, self._trusted)

    def banned(self, request: web.Request) -> bool:
        if not self._banned:  # the common case, on every proxied request: no work at all
            return False
        address = self.address(request)
        return address is not None and _within(address, self._banned)

    def launch_wait(self, request: web.Request) -> float:
        """0 if this client may start a launch now, else seconds to wait."""
        address = self.address(request)
        return 0.0 if address is None else self._limiter.allow(address)

    def record(self, request: web.Request, launch_id: str, provider: str, spec: str) -> None:
        if self._log is None:
            return
        address = self.address(request)
        try:
            self._log.write(
                {
                    "address": str(address or ""),
                    "launch_id": launch_id,
                    "provider": provider,
                    "spec": spec,
                }
            )
        except OSError as exc:  # a full disk must not stop launches
            log.warning("abuse.log_failed", error=str(exc))

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
