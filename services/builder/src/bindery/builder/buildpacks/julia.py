"""Project.toml / REQUIRE: packs for kinds of environment whose packages come from a host this
Bindery cannot reach.

In: the repository's Julia files (``detect``). Out: an ``UnsupportedRepository`` at once,
naming the hosts (``missing_host``), instead of a build that retries for minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from repo2docker.buildpacks.base import BaseImage

from bindery.builder.buildpacks.base import UnsupportedRepository, missing_host


class _MissingHost(BaseImage):  # type: ignore[misc]
    """A kind of environment whose packages come from a host this Bindery cannot reach: the
    build fails at once, naming the host, instead of after minutes of retries."""

    WHAT = ""
    HOST = ""

    def render(self, build_args: dict[str, str] | None = None) -> str:
        return ""

    def build(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        raise UnsupportedRepository(missing_host(self.WHAT, self.HOST))


class JuliaBuildPack(_MissingHost):
    WHAT = "Julia and Julia packages (Project.toml / REQUIRE)"
    HOST = "julialang-s3.julialang.org and pkg.julialang.org"

    def detect(self) -> bool:
        return any(
            os.path.exists(self.binder_path(name))
            for name in ("Project.toml", "JuliaProject.toml", "REQUIRE")
        )
