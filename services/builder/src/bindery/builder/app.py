"""Wires the builder: settings, build options, the domain object, subscriptions."""

from __future__ import annotations

import os
import socket
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
    )


def main() -> None:
    settings = BuilderSettings()
    options = build_options(settings)

    async def start(bus: Bus) -> None:
        builder = Builder(
            options,
            bus.publish,
            replica=f"{socket.gethostname()}-{os.getpid()}",
            max_concurrent_builds=settings.max_concurrent_builds,
            recently_built=settings.recently_built,
        )
        await subscribe(bus, builder, settings.prefetch)

    service.run("builder", settings, settings.health_port, start)
