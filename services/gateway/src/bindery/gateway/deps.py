"""What the gateway's handlers depend on, in one object, so tests can hand in fakes (no broker)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bindery.events import Event
from bindery.gateway.progress import ProgressHub
from bindery.gateway.proxy import RouteTable, SessionLister
from bindery.gateway.settings import GatewaySettings

RegistryCheck = Callable[[], Awaitable[bool]]


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

    @classmethod
    def create(
        cls,
        settings: GatewaySettings,
        bus: Publisher,
        runtime: SessionLister | None = None,
        registry_check: RegistryCheck | None = None,
    ) -> Gateway:
        progress = ProgressHub(
            public_url=settings.public_url,
            secret=settings.require_secret(),
            max_launches=settings.progress_max_launches,
            max_entries=settings.progress_max_entries,
            max_total_entries=settings.progress_max_total_entries,
            retention=settings.progress_retention,
            terminal_grace=settings.progress_terminal_grace,
        )
        return cls(settings, bus, progress, RouteTable(), runtime, registry_check)
