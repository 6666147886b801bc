"""Wires the builder: settings, build options, the domain object, subscriptions."""

from __future__ import annotations

import os
import subprocess

from bindery import service
from bindery.builder.baseimage import base_image_name
from bindery.builder.build import BuildOptions
from bindery.builder.builds import Builder
from bindery.builder.handlers import subscribe
from bindery.builder.settings import BuilderSettings
from bindery.bus import Bus


def build_options(settings: BuilderSettings) -> BuildOptions:
    base_image = settings.base_image or base_image_name()
    # Fail at start, not at every launch: without it each build fails on its FROM line.
    if subprocess.run(["podman", "image", "exists", base_image], check=False).returncode != 0:
        raise SystemExit(f"base image {base_image} is missing: run scripts/base-image.sh")
    return BuildOptions(
        timeout=settings.build_timeout,
        base_image=base_image,
        ca_bundle=settings.ca_bundle if os.path.isfile(settings.ca_bundle) else "",
        memory_limit=settings.build_memory_limit,
        push_tls_verify=settings.registry_scheme == "https",
        allowed_schemes=settings.allowed_schemes(),
        index_url=settings.index_url,
        env_repository=f"{settings.registry}/{settings.image_prefix}env",
        max_repo_bytes=settings.max_repo_bytes,
        max_log_bytes=settings.max_log_bytes,
        provider_hosts=settings.provider_hosts(),
    )


def main() -> None:
    settings = BuilderSettings()
    options = build_options(settings)

    async def start(bus: Bus) -> None:
        replica = settings.replica_name()
        builder = Builder(
            options,
            bus.publish,
            replica=replica,
            max_concurrent_builds=settings.max_concurrent_builds,
            recently_built=settings.recently_built,
        )
        await subscribe(bus, builder, replica, settings.prefetch)

    service.run("builder", settings, settings.health_port, start)
