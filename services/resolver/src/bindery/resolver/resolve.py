"""The resolver's domain: launch-requested -> ref-resolved or launch-failed.

Turns a spec into a repository URL and commit, names the image deterministically from them, and
asks the registry whether it already exists so an image is never built twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from bindery.events import Event, LaunchFailed, LaunchRequested, RefResolved
from bindery.naming import repo_slug
from bindery.resolver.git import resolve_commit
from bindery.resolver.registry import Registry
from bindery.resolver.settings import ResolverSettings
from bindery.resolver.spec import BadSpec, parse_spec

log = structlog.get_logger("bindery.resolver")

Publish = Callable[[Event], Awaitable[None]]


def image_name(registry: str, prefix: str, repo_url: str, commit: str) -> str:
    return f"{registry}/{prefix}{repo_slug(repo_url)}:{commit}"


def repo_key(repo_url: str) -> str:
    return repo_url.lower().removesuffix("/").removesuffix(".git")


@dataclass
class Resolver:
    settings: ResolverSettings
    registry: Registry
    publish: Publish

    async def on_launch_requested(self, event: LaunchRequested) -> None:
        try:
            target = parse_spec(
                event.provider, event.spec, self.settings.profile, self.settings.max_spec_length
            )
            commit = await resolve_commit(
                target.repo_url, target.ref, self.settings.profile, self.settings.git_timeout
            )
        except BadSpec as exc:
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
            self.settings.registry, self.settings.image_prefix, target.repo_url, commit
        )
        exists = await self.registry.image_exists(image)
        log.info(
            "resolve.completed", repo=target.repo_url, ref=target.ref, commit=commit, exists=exists
        )
        await self.publish(
            RefResolved(
                launch_id=event.launch_id,
                provider=event.provider,
                spec=event.spec,
                repo_url=target.repo_url,
                ref=target.ref,
                resolved_ref=commit,
                repo_key=repo_key(target.repo_url),
                image=image,
                image_exists=exists,
                build_only=event.build_only,
            )
        )
