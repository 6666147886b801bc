"""Wires the resolver: settings, registry client, domain object, subscriptions."""

from __future__ import annotations

from bindery import service
from bindery.bus import Bus
from bindery.resolver.handlers import subscribe
from bindery.resolver.registry import Registry
from bindery.resolver.resolve import Resolver
from bindery.resolver.settings import ResolverSettings


def main() -> None:
    settings = ResolverSettings()

    async def start(bus: Bus) -> None:
        registry = Registry(settings.registry_scheme, settings.registry)
        await subscribe(bus, Resolver.create(settings, registry, bus.publish))

    service.run("resolver", settings, settings.health_port, start)
