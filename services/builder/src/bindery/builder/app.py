"""Wires the builder: settings, build options, the domain object, subscriptions, the index
forwarder (closed by the runner at the stop) and the pruning of old images, a loop supervised
by the runner that runs once at start and then every `prune_interval`."""

from __future__ import annotations

import subprocess

from bindery import service
from bindery.builder import cgroups
from bindery.builder.baseimage import base_images
from bindery.builder.buildprocess import SpareProcess
from bindery.builder.coordinator import Builder
from bindery.builder.handlers import subscribe
from bindery.builder.indexforward import STEP_HOST, Index, IndexForwarder
from bindery.builder.job import BuildOptions
from bindery.builder.prune import PrunePolicy, Pruner
from bindery.builder.pythons import Pythons
from bindery.builder.sandbox import Sandbox
from bindery.builder.settings import BuilderSettings
from bindery.settings import Profile


def index_forwarder(settings: BuilderSettings) -> IndexForwarder | None:
    """The forwarder builds reach an index with credentials through; None for one without."""
    if not Index.parse(settings.index_url).needs_forwarding:
        return None
    return IndexForwarder(
        settings.index_url, settings.index_forwarder_port, settings.ca_bundle_file()
    )


def build_options(
    settings: BuilderSettings, sandbox: Sandbox, forwarder: IndexForwarder | None
) -> BuildOptions:
    try:
        pythons = Pythons(
            base_images(settings.python_versions),
            settings.default_python,
            settings.python_fallback,
        )
    except ValueError as e:
        raise SystemExit(f"BINDERY_DEFAULT_PYTHON: {e}") from e
    # Fail at start, not at every launch: without them builds fail on their FROM line. Run
    # first from here, outside any build's cgroup, podman also starts the sandbox's pause
    # process (which holds its user namespace) where no build's end will kill it.
    for version, image in pythons.images:
        exists = subprocess.run(sandbox.podman("image", "exists", image), check=False)
        if exists.returncode != 0:
            raise SystemExit(
                f"the base image of Python {version}, {image}, is missing from the build "
                f"sandbox's image store: run scripts/base-image.sh {version}"
            )
    return BuildOptions(
        timeout=settings.build_timeout,
        pythons=pythons,
        ca_bundle=settings.ca_bundle_file(),
        memory_limit=settings.build_memory_limit,
        pids_limit=settings.build_pids_limit,
        min_free_disk=settings.build_min_free_disk,
        sandbox_user=sandbox.user,
        # Locally, file:// repositories are any path the builder may read; elsewhere every
        # fetch is the sandbox's, under its network rules.
        fetch_in_sandbox=settings.profile is not Profile.LOCAL,
        cgroup_prefix=f"{settings.replica_name()}-",
        push_tls_verify=settings.registry_scheme == "https",
        push_compression=settings.push_compression,
        allowed_schemes=settings.allowed_schemes(),
        index_url=forwarder.url_for(STEP_HOST) if forwarder else settings.index_url,
        index_lookup_url=forwarder.url_for("127.0.0.1") if forwarder else "",
        conda_channel_alias=settings.conda_channel_alias,
        conda_default_channels=tuple(settings.conda_default_channels),
        conda_pkgs_dir=settings.conda_pkgs_dir,
        cran_mirror=settings.cran_mirror,
        nix_channel=settings.nix_channel,
        nix_substituters=tuple(settings.nix_substituters),
        registry_mirror=settings.registry_mirror,
        env_repository=f"{settings.registry}/{settings.image_prefix}env",
        max_repo_bytes=settings.max_repo_bytes,
        max_log_bytes=settings.max_log_bytes,
        provider_hosts=settings.provider_hosts(),
    )


def prune_policy(settings: BuilderSettings, options: BuildOptions) -> PrunePolicy:
    return PrunePolicy(
        prefix=f"{settings.registry}/{settings.image_prefix}",
        env_repository=options.env_repository,
        keep_env_images=settings.prune_keep_env_images,
        prune_after=settings.prune_after,
    )


def main() -> None:
    settings = BuilderSettings()
    sandbox = Sandbox(settings.build_user)
    sandbox.prepare()
    forwarder = index_forwarder(settings)
    options = build_options(settings, sandbox, forwarder)
    # The builds of this replica's killed predecessor, if any: their steps may still run.
    cgroups.remove_stale(options.cgroup_prefix)
    pruner = Pruner(prune_policy(settings, options), sandbox)

    async def start(starter: service.Starter) -> list[service.Loop]:
        if forwarder is not None:
            starter.resources.push_async_callback(forwarder.close)
            await forwarder.start()
        replica = settings.replica_name()
        spares = SpareProcess(options)
        starter.resources.push_async_callback(spares.close)
        spares.start()
        builder = Builder(
            options,
            starter.bus.publish,
            replica=replica,
            max_concurrent_builds=settings.max_concurrent_builds,
            recently_built=settings.recently_built,
            run=spares.run_build,
        )
        await subscribe(starter.bus, builder, replica, settings.prefetch)
        if settings.prune_interval <= 0:
            return []
        # A failed pass is retried at the next interval: a full disk is better delayed than a
        # builder stopped (and the runner's health names the loop once passes keep failing).
        return [service.Loop("prune", pruner.prune, settings.prune_interval, at_start=True)]

    service.run("builder", settings, settings.health_port, start)
