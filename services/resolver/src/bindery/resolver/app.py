"""Wires the resolver: settings, registry client, domain object (whose provider API client
the runner closes with the registry client at the stop), subscriptions."""

from __future__ import annotations

from bindery import service
from bindery.resolver.handlers import subscribe
from bindery.resolver.registry import Registry
from bindery.resolver.resolve import Resolver
from bindery.resolver.settings import ResolverSettings


def main() -> None:
    settings = ResolverSettings()

    async def start(starter: service.Starter) -> None:
        registry = Registry(settings.registry_scheme, settings.registry)
        starter.resources.push_async_callback(registry.close)
        resolver = Resolver.create(settings, registry, starter.bus.publish)
        starter.resources.push_async_callback(resolver.close)
        await subscribe(starter.bus, resolver)

    service.run("resolver", settings, settings.health_port, start)
