"""The resolver's domain: launch-requested -> ref-resolved or launch-failed.

Checks the operator's bans, parses the spec (refusing hostile input before any subprocess or
URL exists), resolves it through its provider to one immutable version (cached, bounded in
time), names the image deterministically from the repository URL and that version, and asks
the registry whether it already exists so an image is never built twice.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from bindery import telemetry
from bindery.events import (
    Event,
    FailureReason,
    LaunchContext,
    LaunchFailed,
    LaunchRequested,
    RefResolved,
    RepoConfig,
)
from bindery.naming import repo_key, repo_slug
from bindery.providers import binder_env
from bindery.resolver.api import ApiClient
from bindery.resolver.cache import LookupCache
from bindery.resolver.errors import ResolveError
from bindery.resolver.hosts import HostPolicy
from bindery.resolver.policy import SpecPolicy
from bindery.resolver.providers import Providers, Resolution
from bindery.resolver.settings import ResolverSettings
from bindery.resolver.spec import parse_spec

log = structlog.get_logger("bindery.resolver")

Publish = Callable[[Event], Awaitable[None]]
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ImageStore(Protocol):
    async def image_exists(self, image: str) -> bool: ...


def image_tag(resolved_ref: str) -> str:
    """An OCI tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}."""
    tag = _TAG_UNSAFE.sub("-", resolved_ref)
    return (tag if tag[:1].isalnum() or tag[:1] == "_" else f"v{tag}")[:128]


def image_name(registry: str, prefix: str, repo_url: str, resolved_ref: str) -> str:
    return f"{registry}/{prefix}{repo_slug(repo_url)}:{image_tag(resolved_ref)}"


def configured_hosts(settings: ResolverSettings) -> set[str]:
    """Hosts of the provider APIs the operator configured: trusted, unlike hosts in links."""
    urls = [
        settings.github_api_url,
        settings.gitlab_url,
        settings.doi_resolver_url,
        settings.zenodo_url,
        settings.figshare_api_url,
        settings.hydroshare_url,
        settings.swh_api_url,
    ]
    hosts = {urlsplit(url).hostname or "" for url in urls}
    return (hosts | {h.split(":")[0] for h in settings.dataverse_hosts}) - {""}


@dataclass
class Resolver:
    settings: ResolverSettings
    registry: ImageStore
    publish: Publish
    providers: Providers
    policy: SpecPolicy
    cache: LookupCache[Resolution]

    @classmethod
    def create(cls, settings: ResolverSettings, registry: ImageStore, publish: Publish) -> Resolver:
        hosts = HostPolicy.build(
            settings.profile, settings.trusted_networks, configured_hosts(settings)
        )
        api = ApiClient(hosts, settings.http_timeout, settings.cache_size)
        return cls(
            settings,
            registry,
            publish,
            Providers(settings, api, hosts),
            SpecPolicy.from_settings(settings),
            LookupCache(settings.cache_size, settings.negative_cache_ttl),
        )

    async def close(self) -> None:
        await self.providers.api.close()

    async def resolve(self, provider: str, raw_spec: str) -> tuple[Resolution, RepoConfig]:
        # No longer than MAX_SPEC_LENGTH: a launch-requested cannot carry a longer spec.
        self.policy.check_allowed(provider, raw_spec)
        target = parse_spec(provider, raw_spec, self.settings.profile, self.settings.max_ref_length)

        async def lookup() -> Resolution:
            try:
                async with asyncio.timeout(self.settings.resolve_timeout):
                    return await self.providers.resolve(target)
            except TimeoutError:
                raise ResolveError(
                    f"Looking up {provider}/{raw_spec[:200]} took longer than "
                    f"{self.settings.resolve_timeout:.0f} s; try again later",
                    FailureReason.REPO_UNREACHABLE,
                ) from None

        def ttl(resolution: Resolution) -> float:
            return math.inf if resolution.immutable else self.settings.cache_ttl

        resolution = await self.cache.get(f"{provider}:{target!r}", lookup, ttl)
        return resolution, self.policy.repo_config(provider, raw_spec)

    @telemetry.traced("resolve")
    async def on_launch_requested(self, event: LaunchRequested) -> None:
        try:
            resolution, repo_config = await self.resolve(event.provider, event.spec)
        except ResolveError as exc:
            log.info("resolve.failed", reason=exc.reason.value, message=str(exc))
            await self.publish(
                LaunchFailed(
                    launch_id=event.launch_id,
                    service="resolver",
                    reason=exc.reason,
                    message=str(exc),
                )
            )
            return
        image = image_name(
            self.settings.registry,
            self.settings.image_prefix,
            resolution.repo_url,
            resolution.resolved_ref,
        )
        exists = await self.registry.image_exists(image)
        log.info(
            "resolve.completed",
            provider=event.provider,
            repo=resolution.repo_url,
            ref=resolution.ref,
            resolved_ref=resolution.resolved_ref,
            exists=exists,
        )
        await self.publish(
            RefResolved(
                launch_id=event.launch_id,
                context=LaunchContext(
                    provider=event.provider,
                    spec=event.spec,
                    repo_url=resolution.repo_url,
                    ref=resolution.ref,
                    resolved_ref=resolution.resolved_ref,
                    repo_key=repo_key(resolution.repo_url),
                    repo_config=repo_config,
                    build_only=event.build_only,
                    session_env=binder_env(
                        event.launch_host,
                        event.provider,
                        event.spec,
                        resolution.repo_url,
                        resolution.resolved_ref,
                    ),
                    requested_at=event.time,
                ),
                image=image,
                image_exists=exists,
            )
        )
