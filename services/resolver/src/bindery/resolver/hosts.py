"""Which hosts the resolver may contact on a stranger's behalf (SSRF protection).

In: a host name from a link, the profile and the operator's trusted networks. Out: nothing, or
`ResolveError` when the host resolves to a loopback, private, link-local, metadata or other
non-global address. DNS runs through the event loop's resolver (a worker thread), never in the
loop thread. `GuardedResolver` applies the same rule inside aiohttp at connect time, so a name
that resolved to a public address during the check cannot rebind to an internal one after it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from bindery.events import FailureReason
from bindery.resolver.errors import ResolveError
from bindery.settings import Profile

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostPolicy:
    profile: Profile
    trusted_networks: tuple[Network, ...] = ()
    trusted_hosts: frozenset[str] = field(default_factory=frozenset)
    """Host names of the provider APIs the operator configured: the connect-time guard lets
    them through. Hosts named in links never are: `check_host` ignores this list."""

    @classmethod
    def build(
        cls, profile: Profile, networks: list[str], trusted_hosts: set[str] | None = None
    ) -> HostPolicy:
        return cls(
            profile,
            tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            frozenset(h.lower() for h in trusted_hosts or ()),
        )

    def allows(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in self.trusted_networks):
            return True
        if address.is_loopback:
            return self.profile is Profile.LOCAL
        return address.is_global and not address.is_multicast

    async def check_host(self, host: str) -> None:
        """Raise unless every address `host` (named in a link) resolves to is allowed."""
        host = host.strip("[]").lower()
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            addresses = [ipaddress.ip_address(a) for a in await _lookup(host)]
        for address in addresses:
            if not self.allows(address):
                raise ResolveError(
                    f"Repositories on {host} ({address}) are not allowed: internal address"
                )


async def _lookup(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ResolveError(f"Cannot resolve host {host!r}", FailureReason.REPO_UNREACHABLE) from exc
    # Scope ids (fe80::1%eth0) are not part of the address.
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops addresses the policy refuses (checked at connect time)."""

    def __init__(self, policy: HostPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() in self._policy.trusted_hosts:
            return results
        allowed = [r for r in results if self._policy.allows(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise OSError(f"{host} resolves only to internal addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
