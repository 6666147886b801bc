"""Dockerfile: a repository's own Dockerfile, built by repo2docker's Docker pack once checked.

In: the repository's Dockerfile and ``BuildContext``'s registry_mirror. Out: a refusal
(bindery.builder.dockerfile) before anything builds if the Dockerfile could reach the host;
else its base images fetched (bindery.builder.registrymirror) and repo2docker's build.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from repo2docker.buildpacks.docker import DockerBuildPack

from bindery.builder.buildpacks.base import BuildContext
from bindery.builder.dockerfile import check_dockerfile
from bindery.builder.registrymirror import fetch_base_images


class CheckedDockerBuildPack(DockerBuildPack):  # type: ignore[misc]
    """A repository's own Dockerfile, built as repo2docker builds it once nothing in it could
    reach the host (bindery.builder.dockerfile): refused before anything builds otherwise."""

    def build(
        self,
        client: Any,
        image_spec: str,
        memory_limit: int,
        build_args: dict[str, str],
        cache_from: list[str],
        extra_build_kwargs: dict[str, Any],
        platform: str | None = None,
    ) -> Iterator[str]:
        text = Path(self.binder_path(self.dockerfile)).read_text(errors="replace")
        images = check_dockerfile(text)
        context: BuildContext = extra_build_kwargs.get("bindery") or BuildContext()
        yield from fetch_base_images(images, client, context.registry_mirror)
        yield from super().build(
            client, image_spec, memory_limit, build_args, cache_from, extra_build_kwargs, platform
        )
