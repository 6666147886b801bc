"""Abuse handling: banned networks, per-client launch limits, and a 30-day address log.

In: each request's client address (from the socket, or from `X-Forwarded-For` when the socket is
a trusted proxy), and the launch events this replica sees. A client is a network (`client_key`):
an IPv4 address, or an IPv6 address's /64 (prefix configurable), since one subscriber picks any
address in its /64. Out: a refusal before any work is done (403 banned; a new launch over the
client's rate, or while it holds its cap of sessions and launches in progress: `Refusal`), and
one JSON line per new launch (time, address, launch id, provider, spec) in a file per UTC day;
files older than the retention are deleted, so addresses are kept for abuse handling only as long
as mybinder.org's published policy says (30 days). Addresses appear nowhere else: the access log
does not carry them.

The limits' defaults follow the deployment's capacity (`client_cap`, `client_burst`). What a
client holds is counted by the replica that started its launches (`ClientLaunches`): with
several gateway replicas a client may hold the cap on each, and a restarted replica starts
counting afresh.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from bindery.events import (
    Event,
    ImageBuilt,
    LaunchAbandoned,
    LaunchFailed,
    NextStep,
    PodReady,
    PodStopped,
    RefResolved,
)
from bindery.gateway.metrics import RATE_LIMITED, TOO_MANY_LAUNCHES

log = structlog.get_logger("bindery.gateway.abuse")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOG_PREFIX = "launches-"
_MAX_TRACKED = 100_000
"""Clients with a rate-limit bucket, and launches counted against clients: beyond it the oldest
state goes (that client's next launch is not held back), so memory stays bounded."""

CAP_FLOOR = 3
"""A client may always hold a session, a relaunch of it and a build of its next version."""
CAP_SHARE = 10
"""A client may hold a tenth of the sessions the deployment runs at once by default: a full
Bindery then serves ten clients at least, and a big one still leaves a classroom behind one
NAT (one IPv4 address) room for its students."""


def client_cap(capacity: int) -> int:
    """Sessions and launches in progress one client may hold at once, by default."""
    return max(CAP_FLOOR, capacity // CAP_SHARE)


def client_burst(cap: int) -> int:
    """Launches one client may start at once, by default: its whole cap, twice (a client that
    fills its share and relaunches each once waits for the refill, not before)."""
    return 2 * cap


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


#: Parsed addresses and client keys remembered: every proxied request asks for its client, and
#: parsing it twice with ipaddress was 5-10 % of the gateway's CPU per request (proxy bench).
#: Both are pure functions of a few thousand distinct values at most between evictions.
ADDRESS_CACHE = 4096


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _address(value: str | None) -> Address | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip().split("%", 1)[0])
    except ValueError:
        return None
    # A socket bound to `::` sees IPv4 peers as ::ffff:a.b.c.d: they are IPv4 clients.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: list[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def peer(request: web.Request) -> tuple[str | None, list[str]]:
    """What says who sent a request: the socket peer and the `X-Forwarded-For` headers."""
    return request.remote, request.headers.getall("X-Forwarded-For", [])


def client_address(
    remote: str | None, forwarded_for: Iterable[str], trusted_proxies: list[Network]
) -> Address | None:
    """The client's address: the socket peer (`remote`), unless that is a trusted proxy, in
    which case the right-most `X-Forwarded-For` entry that is not itself a trusted proxy
    (entries further left are whatever the client chose to send)."""
    socket_peer = _address(remote)
    if socket_peer is None or not _within(socket_peer, trusted_proxies):
        return socket_peer
    hops = [h for v in forwarded_for for h in v.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return socket_peer
        if not _within(address, trusted_proxies):
            return address
    return socket_peer


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def client_key(address: Address, ipv6_prefix: int = 64) -> Network:
    """The network that counts as one client: an IPv4 address alone, an IPv6 address's
    `ipv6_prefix` network (a subscriber gets a whole /64 or more and sends from any address in
    it). Limits per client, here and elsewhere in the gateway, key on this."""
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(address)
    return ipaddress.IPv6Network((address, ipv6_prefix), strict=False)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client: `burst` launches at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = _MAX_TRACKED) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_clients = max_clients
        self._buckets: dict[Network, _Bucket] = {}

    def allow(self, client: Network, now: float | None = None) -> float:
        """0 if a launch is allowed now (and takes a token); else seconds until one is."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _forget_full(self, now: float) -> None:
        """Clients whose bucket has refilled carry no state worth keeping."""
        for client, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self._rate >= self._burst:
                del self._buckets[client]


@dataclass
class _Held:
    client: Network
    session: str = ""
    """Set once the launch is ready: from then on it is a running session."""


class ClientLaunches:
    """What each client holds on this replica: launches started here that have not failed, been
    abandoned, or (once ready) had their session stop. Build-only launches end when ready.

    In: `start` before a launch's request is published (its first answer may come back before
    the publish returns), then every launch event (`observe`; unknown launches are ignored, so
    other replicas' launches and redeliveries cost nothing). Out: `held(client)`. At most
    `max_held` launches are kept, the oldest forgotten first; a client's own are at most its
    cap, since launches over it are refused."""

    def __init__(self, max_held: int = _MAX_TRACKED) -> None:
        self._max_held = max_held
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._by_client: dict[Network, set[str]] = {}
        self._by_session: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, client: Network) -> tuple[int, int]:
        """(running sessions, launches in progress) of `client`."""
        launch_ids = self._by_client.get(client, ())
        sessions = sum(1 for launch_id in launch_ids if self._held[launch_id].session)
        return sessions, len(launch_ids) - sessions

    def start(self, client: Network, launch_id: str) -> None:
        while len(self._held) >= self._max_held:
            self.end(next(iter(self._held)))
        self._held[launch_id] = _Held(client)
        self._by_client.setdefault(client, set()).add(launch_id)

    def observe(self, event: Event) -> None:
        match event:
            case PodReady() if event.launch_id in self._held:
                self._held[event.launch_id].session = event.session
                self._by_session[event.session] = event.launch_id
            case PodStopped():
                self.end(self._by_session.get(event.session, event.launch_id))
            case LaunchFailed() | LaunchAbandoned():
                self.end(event.launch_id)
            case RefResolved(route=NextStep.DONE) | ImageBuilt(route=NextStep.DONE):
                self.end(event.launch_id)

    def end(self, launch_id: str) -> None:
        held = self._held.pop(launch_id, None)
        if held is None:
            return
        if held.session:
            self._by_session.pop(held.session, None)
        launch_ids = self._by_client[held.client]
        launch_ids.discard(launch_id)
        if not launch_ids:
            del self._by_client[held.client]


@dataclass(frozen=True)
class Refusal:
    """Why a new launch is refused, for the person who asked (`reason` as in `failed`)."""

    reason: str
    message: str
    retry_after: float | None = None


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
        cap: int,
        ipv6_prefix: int = 64,
    ) -> None:
        self._banned = banned
        self._trusted = trusted_proxies
        self._limiter = limiter
        self._log = address_log
        self._ipv6_prefix = ipv6_prefix
        self.cap = cap
        """Sessions and launches in progress one client may hold at once."""
        self.launches = ClientLaunches()

    def address(self, remote: str | None, forwarded_for: Iterable[str]) -> Address | None:
        return client_address(remote, forwarded_for, self._trusted)

    def client(self, remote: str | None, forwarded_for: Iterable[str]) -> Network | None:
        """The client of a request from `remote` (`client_key`); None when it has no IP
        address."""
        address = self.address(remote, forwarded_for)
        return None if address is None else client_key(address, self._ipv6_prefix)

    def banned(self, remote: str | None, forwarded_for: Iterable[str]) -> bool:
        if not self._banned:  # the common case, on every proxied request: no work at all
            return False
        address = self.address(remote, forwarded_for)
        return address is not None and _within(address, self._banned)

    def refusal(self, client: Network | None) -> Refusal | None:
        """Why `client` may not start a launch now; None: it may (and it took a rate token).
        The cap is checked first: a refused launch costs no token."""
        if client is None:
            return None
        sessions, starting = self.launches.held(client)
        if sessions + starting >= self.cap:
            TOO_MANY_LAUNCHES.inc()
            return Refusal("too_many_launches", _too_many_message(sessions, starting, self.cap))
        wait = self._limiter.allow(client)
        if wait > 0:
            RATE_LIMITED.inc()
            return Refusal(
                "rate_limited",
                f"Too many launches from your network: try again in {wait:.0f} s.",
                wait,
            )
        return None

    def record(self, request: web.Request, launch_id: str, provider: str, spec: str) -> None:
        if self._log is None:
            return
        address = self.address(*peer(request))
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


def _too_many_message(sessions: int, starting: int, cap: int) -> str:
    held = []
    if sessions:
        held.append(f"{sessions} session{'' if sessions == 1 else 's'} running")
    if starting:
        held.append(f"{starting} launch{'' if starting == 1 else 'es'} in progress")
    return (
        f"Your network already has {' and '.join(held)} on this Bindery, its limit of {cap} at "
        "once. Shut down a session you no longer use (File > Shut Down in JupyterLab) or close "
        "a launch page you left open, then launch again.\n"
    )
