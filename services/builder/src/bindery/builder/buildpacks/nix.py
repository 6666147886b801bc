"""default.nix: repo2docker's Nix pack (the Nix side is bindery.builder.nixpack).

In: the repository's default.nix (and any .nix file it names), ``BuildContext``'s nix_channel
and nix_substituters (``configure``). Out: the install and realise steps, the
nix-shell-wrapper start script (generated), the mirror's volumes and note, or an
``UnsupportedRepository`` naming the hosts when default.nix needs them and no channel is
configured.
"""

from __future__ import annotations

import os
import shlex
from functools import lru_cache
from pathlib import Path

from repo2docker.utils import open_guess_encoding

from bindery.builder import nixpack
from bindery.builder.buildpacks.base import (
    GENERATED_DIR,
    BinderyBuildPack,
    BuildContext,
    UnsupportedRepository,
    missing_host,
)


class NixBuildPack(BinderyBuildPack):
    """default.nix, as repo2docker's Nix pack (bindery.builder.nixpack): Nix for the image's
    user, nixpkgs from the builder's nix_channel, what ``nix-shell default.nix`` needs built
    into the image (substituted from nix_substituters where they have it), and the session's
    command run inside that nix-shell. Without a channel, a default.nix that asks for
    ``<nixpkgs>`` or the network fails at once naming the hosts; one using builtins only
    builds. Realised in the environment image when default.nix names no other file, else
    with the repository."""

    WHAT = "Nix packages (default.nix)"
    WRAPPER = "nix-shell-wrapper"

    def __init__(self, base_image: str) -> None:
        super().__init__(base_image)
        self._mirror = nixpack.NixMirror()

    def detect(self) -> bool:
        return os.path.exists(self.binder_path("default.nix"))

    def configure(self, context: BuildContext) -> None:
        self._mirror = nixpack.NixMirror(context.nix_channel, context.nix_substituters)

    def check(self) -> None:
        super().check()
        if not self._mirror.channel and self._needs().hosts:
            raise UnsupportedRepository(missing_host(self.WHAT, nixpack.HOSTS))
        problem = self._mirror.problem()
        if problem:
            raise UnsupportedRepository(problem)

    def volumes(self, context: BuildContext) -> list[str]:
        return self._mirror.volumes()

    def notes(self) -> list[str]:
        return [*super().notes(), self._mirror.describe()]

    def generated_file_names(self) -> list[str]:
        return [*super().generated_file_names(), self.WRAPPER]

    def generated_files(self, context: BuildContext) -> dict[str, str]:
        start = nixpack.wrapper(self._nix_file(), self.binder_path("start"))
        return {**super().generated_files(context), self.WRAPPER: start}

    # Not cached, unlike the other packs' hooks: they depend on the mirror build() is handed.
    def get_build_env(self) -> list[tuple[str, str]]:
        env: list[tuple[str, str]] = super().get_build_env()
        env.append(("NIX_BUILD_SHELL", f"{nixpack.SHELL_DIR}/bash"))
        if self._mirror.channel:
            env.append(("NIX_PATH", f"nixpkgs={nixpack.CHANNEL_PATH}"))
        return env

    def get_build_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = [*super().get_build_scripts()]
        scripts.append(("root", nixpack.INSTALL_SCRIPT))
        if self._mirror.channel:
            scripts.append(("${NB_USER}", self._mirror.channel_script()))
        return scripts

    def get_preassemble_script_files(self) -> dict[str, str]:
        files: dict[str, str] = {**super().get_preassemble_script_files()}
        if not self._needs().local_files:
            files[self._nix_file()] = self._nix_file()
        return files

    def get_preassemble_scripts(self) -> list[tuple[str, str]]:
        wrapper = f"{GENERATED_DIR}/{self.WRAPPER}"
        # The user's, as repo2docker's: the repository's layer makes the start script executable.
        install = f"install -o ${{NB_USER}} -g ${{NB_USER}} -m 0755 {wrapper} {nixpack.WRAPPER}"
        scripts: list[tuple[str, str]] = [*super().get_preassemble_scripts(), ("root", install)]
        if not self._needs().local_files:
            scripts.append(("${NB_USER}", self._mirror.realise(self._nix_file())))
        return scripts

    def get_assemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = [*super().get_assemble_scripts()]
        if os.path.exists(self.binder_path("start")):
            scripts.append(("${NB_USER}", f"chmod +x {shlex.quote(self.binder_path('start'))}"))
        if self._needs().local_files:
            scripts.append(("${NB_USER}", self._mirror.realise(self._nix_file())))
        return scripts

    def get_start_script(self) -> str:
        return nixpack.WRAPPER

    def _nix_file(self) -> str:
        return str(self.binder_path("default.nix"))

    @lru_cache  # noqa: B019
    def _needs(self) -> nixpack.Needs:
        """What default.nix asks for; with other files named, what any .nix file does."""
        with open_guess_encoding(self._nix_file()) as f:
            found = nixpack.needs(f.read())
        if not found.local_files:
            return found
        for path in Path().rglob("*.nix"):
            if ".git" not in path.parts:
                other = nixpack.needs(path.read_text(errors="replace"))
                found = nixpack.Needs(
                    found.search_paths | other.search_paths,
                    found.fetches or other.fetches,
                    local_files=True,
                )
        return found
