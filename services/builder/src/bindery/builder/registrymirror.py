"""Docker Hub images a repository's Dockerfile builds on, fetched through the operator's mirror.

In: the registry images a checked Dockerfile names (bindery.builder.dockerfile: FROM, COPY
--from), the builder's `registry_mirror` setting, and the engine (the sandbox's image store).
Out: each Docker Hub image (`python:3.11`, `user/image`, `docker.io/library/x`) in the store
under its Docker Hub name before `podman build` starts, pulled from the mirror as podman's
registries.conf `[[registry.mirror]]` would (`<mirror>/library/python:3.11`); or, with no mirror
and the image not already in the store, `MissingBaseImage` naming the registry and the setting,
at once instead of a pull that cannot succeed (Docker Hub's anonymous pull limits, or no route
to it at all, as on a machine whose only way out is a package mirror).

Why the builder pulls and not the build: pulls run in the registry cgroup (bindery.builder.
sandbox.join_registry_cgroup), the one place of the build user's that may reach the local
registry, which can be the mirror. Build steps never can. Images of other registries
(quay.io/..., ghcr.io/..., the local registry's) are left to podman as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol
from urllib.parse import urlsplit

from repo2docker.engine import BuildError

DOCKER_HUB = "docker.io"
SETTING = "BINDERY_REGISTRY_MIRROR"


class MissingBaseImage(BuildError):  # type: ignore[misc]
    """A Dockerfile's image can be had from nowhere; the message says which and what to set."""


class Store(Protocol):
    def has_image(self, image: str) -> bool: ...

    def pull_as(self, source: str, name: str, *, tls_verify: bool) -> Iterator[str]:
        """Pull ``source`` and keep it under ``name`` too; yields the pull's output."""
        ...


def check_mirror_setting(value: str) -> str:
    """An http(s) URL of a registry (host, optional port and path), no credentials."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{SETTING} {value!r} is not an http(s) URL of a registry")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{SETTING} {value!r}: only scheme, host, port and path are accepted")
    return value.rstrip("/")


def docker_hub_name(image: str) -> str | None:
    """``image`` as Docker Hub names it (`docker.io/library/python:3.11`); None when it names
    another registry (a first component with a dot or a port, or `localhost`)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        if first not in (DOCKER_HUB, "index.docker.io", "registry-1.docker.io"):
            return None
        image = rest
    if "/" not in image:
        image = f"library/{image}"
    if ":" not in image.rpartition("/")[2] and "@" not in image:
        image += ":latest"
    return f"{DOCKER_HUB}/{image}"


def mirrored(name: str, mirror: str) -> tuple[str, bool]:
    """Where the mirror has Docker Hub's ``name``, and whether to verify its TLS."""
    parts = urlsplit(mirror)
    return f"{parts.netloc}{parts.path}/{name.removeprefix(DOCKER_HUB + '/')}", (
        parts.scheme == "https"
    )


def fetch_base_images(images: list[str], store: Store, mirror: str) -> Iterator[str]:
    """Have every Docker Hub image of ``images`` in ``store``; yields log lines."""
    for image in images:
        name = docker_hub_name(image)
        if name is None or store.has_image(name):
            continue
        if not mirror:
            raise MissingBaseImage(
                f"The Dockerfile's image {image} comes from {DOCKER_HUB} (Docker Hub), which this "
                f"Bindery pulls from only through a mirror, and none is set ({SETTING}); "
                "the image is not in the builder's store either."
            )
        source, tls_verify = mirrored(name, mirror)
        yield f"Pulling {image} through the registry mirror ({source})\n"
        yield from store.pull_as(source, name, tls_verify=tls_verify)
