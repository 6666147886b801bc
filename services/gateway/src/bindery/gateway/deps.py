"""What the gateway's handlers depend on, in one object, so tests can hand in fakes (no broker)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bindery.events import Event
from bindery.gateway.abuse import AbuseGuard, AddressLog, RateLimiter, parse_networks
from bindery.gateway.progress import ProgressHub
from bindery.gateway.proxy import RouteTable, SessionLister
from bindery.gateway.settings import GatewaySettings

RegistryCheck = Callable[[], Awaitable[bool]]
NodeCheck = Callable[[], Awaitable[bool]]


class Publisher(Protocol):
    """The part of `bindery.bus.Bus` the HTTP side uses."""

    @property
    def connected(self) -> bool: ...

    async def publish(self, event: Event, headers: dict[str, str] | None = None) -> None: ...


@dataclass
class Gateway:
    settings: GatewaySettings
    bus: Publisher
    progress: ProgressHub
    routes: RouteTable
    runtime: SessionLister | None = None
    """Only used at start, to rebuild routes; None skips that (tests)."""
    registry_check: RegistryCheck | None = None
    """None: ask the registry over HTTP (set at app start with the shared client)."""
    node_checks: dict[str, NodeCheck] = field(default_factory=dict)
    """Runtime node name -> whether it answers, for /health; empty: no nodes reported."""
    abuse: AbuseGuard | None = None
    """Banned networks, launch rate limit, address log; None: none of them (tests)."""

    @classmethod
    def create(
        cls,
        settings: GatewaySettings,
        bus: Publisher,
        runtime: SessionLister | None = None,
        registry_check: RegistryCheck | None = None,
        node_checks: dict[str, NodeCheck] | None = None,
    ) -> Gateway:
        progress = ProgressHub(
            public_url=settings.public_url,
            secret=settings.require_secret(),
            max_launches=settings.progress_max_launches,
            max_entries=settings.progress_max_entries,
            max_total_entries=settings.progress_max_total_entries,
            retention=settings.progress_retention,
            terminal_grace=settings.progress_terminal_grace,
            terminal_grace_max=settings.progress_terminal_grace_max,
        )
        abuse = AbuseGuard(
            banned=parse_networks(settings.banned_networks.split(",")),
            trusted_proxies=parse_networks(settings.trusted_proxies.split(",")),
            limiter=RateLimiter(settings.launch_rate_per_minute, settings.launch_rate_burst),
            address_log=(
                AddressLog(Path(settings.client_log_dir), settings.client_log_retention_days)
                if settings.client_log_dir
                else None
            ),
        )
        return cls(
            settings,
            bus,
            progress,
            RouteTable(),
            runtime,
            registry_check,
            node_checks or {},
            abuse,
        )
