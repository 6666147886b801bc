"""install.R, DESCRIPTION and runtime.txt ``r-``: repo2docker's R pack, on top of the Python
one (the mirror side is bindery.builder.cran).

In: the repository's R files and ``BuildContext``'s cran_mirror. Out: Debian's R and the
IRkernel installed before anything of the repository, Rprofile.site pointing at the mirror
(generated), install.R and DESCRIPTION's steps, the mirror's volumes and notes; or an
``UnsupportedRepository`` when no mirror is configured or runtime.txt asks for an R there is
not.
"""

from __future__ import annotations

import os
from functools import lru_cache

from bindery.builder.buildpacks.base import (
    GENERATED_DIR,
    BuildContext,
    UnsupportedRepository,
    missing_host,
)
from bindery.builder.buildpacks.python import PythonBuildPack
from bindery.builder.cran import CranMirror, rprofile

# Debian bookworm's r-base-core: the only R builds can install (no other R binaries reachable).
R_VERSION = "4.2.2"


class RBuildPack(PythonBuildPack):
    """install.R, DESCRIPTION or a runtime.txt ``r-...``, with R from Debian and R packages from
    the configured CRAN mirror (bindery.builder.cran); without one the build fails at once
    naming the hosts repo2docker would use. As repo2docker's RBuildPack: install.R run with
    Rscript before the repository is copied (again after it, if that failed), a root
    DESCRIPTION installed with ``remotes::install_local()``, the IRkernel in Jupyter, packages
    in ``R_LIBS_USER``; and everything the Python pack reads (requirements.txt, ...) too. A
    DESCRIPTION's dependencies are installed in the environment (keyed on it), so a commit that
    changes only the package's code reinstalls the package alone."""

    WHAT = "R packages (install.R, DESCRIPTION or an r- runtime.txt)"
    HOST = "CRAN (cloud.r-project.org) and Posit Package Manager (packagemanager.posit.co)"
    # Debian's: r-base-dev brings the compilers CRAN's source packages need, r-cran-irkernel
    # the kernel (registered in /usr/share/jupyter, which /srv/venv's Jupyter reads), and
    # r-cran-remotes what installs a DESCRIPTION.
    PACKAGES = ("r-base-core", "r-base-dev", "r-cran-irkernel", "r-cran-remotes")
    RPROFILE = "Rprofile.site"
    RSCRIPT = "Rscript --no-save --no-restore --no-init-file --no-environ"
    R = "R --no-save --no-restore --no-init-file --no-environ --quiet -e"

    def __init__(self, base_image: str) -> None:
        super().__init__(base_image)
        self._notes: list[str] = []

    def detect(self) -> bool:
        if self.runtime[0] == "r":
            return True
        if os.path.exists(self.binder_path("install.R")):
            return True
        return self._description() is not None

    def configure(self, context: BuildContext) -> None:
        if not context.cran_mirror:
            raise UnsupportedRepository(missing_host(self.WHAT, self.HOST))
        problem = CranMirror(context.cran_mirror).problem()
        if problem:
            raise UnsupportedRepository(problem)

    def check(self) -> None:
        super().check()
        name, version, _ = self.runtime
        if name == "r" and version and not _same_version(version, R_VERSION):
            short = ".".join(R_VERSION.split(".")[:2])
            raise UnsupportedRepository(
                f"runtime.txt asks for r-{version}, but this Bindery has R {R_VERSION} only "
                f"(Debian 12's). Change runtime.txt to r-{short} (or r-{short}-<date>)."
            )

    def volumes(self, context: BuildContext) -> list[str]:
        return CranMirror(context.cran_mirror).volumes()

    def generated_file_names(self) -> list[str]:
        return [*super().generated_file_names(), self.RPROFILE]

    def generated_files(self, context: BuildContext) -> dict[str, str]:
        mirror = CranMirror(context.cran_mirror)
        self._notes = [f"R {R_VERSION} from Debian. {mirror.describe()}"]
        date = self.runtime[2]
        if self.runtime[0] == "r" and date:
            self._notes.append(
                f"runtime.txt asks for CRAN as it was on {date}: a mirror has no snapshots, so "
                "R packages are installed from the mirror as it is now."
            )
        return {**super().generated_files(context), self.RPROFILE: rprofile(mirror)}

    def notes(self) -> list[str]:
        return [*super().notes(), *self._notes]

    @lru_cache  # noqa: B019
    def get_build_env(self) -> list[tuple[str, str]]:
        # Packages go where the user can add more in the session (repo2docker's place).
        env: list[tuple[str, str]] = super().get_build_env()
        return [*env, ("R_LIBS_USER", "${APP_BASE}/rlibs")]

    @lru_cache  # noqa: B019
    def get_build_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_build_scripts()
        install = rf"""
            apt-get -qq update && \
            apt-get install -qq --yes --no-install-recommends {" ".join(self.PACKAGES)} \
                > /dev/null && \
            apt-get -qq clean && \
            rm -rf /var/lib/apt/lists/* && \
            install -d -o ${{NB_USER}} -g ${{NB_USER}} ${{R_LIBS_USER}} && \
            R --version | head -n 1
            """
        return [*scripts, ("root", install)]

    @lru_cache  # noqa: B019
    def get_preassemble_script_files(self) -> dict[str, str]:
        files: dict[str, str] = super().get_preassemble_script_files()
        for path in (self._install_r(), self._description()):
            if path:
                files[path] = path
        return files

    @lru_cache  # noqa: B019
    def get_preassemble_scripts(self) -> list[tuple[str, str]]:
        # The mirror before anything that installs R packages.
        profile = f"cat {GENERATED_DIR}/{self.RPROFILE} >> /etc/R/Rprofile.site"
        scripts: list[tuple[str, str]] = [("root", profile), *super().get_preassemble_scripts()]
        install_r = self._install_r()
        if install_r:
            # repo2docker's: most install.R files need nothing of the repository, so they run
            # in the environment; one that fails there runs again after the repository is
            # copied (get_assemble_scripts).
            scripts.append(
                (
                    "${NB_USER}",
                    f"{self.RSCRIPT} {install_r} && touch /tmp/.preassembled || true && "
                    "rm -rf /tmp/downloaded_packages",
                )
            )
        if self._description():
            scripts.append(("${NB_USER}", f"{self.R} \"remotes::install_deps(upgrade = 'never')\""))
        return scripts

    @lru_cache  # noqa: B019
    def get_assemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_assemble_scripts()
        install_r = self._install_r()
        if install_r:
            scripts.append(
                (
                    "${NB_USER}",
                    f"if [ ! -f /tmp/.preassembled ]; then {self.RSCRIPT} {install_r}; "
                    "rm -rf /tmp/downloaded_packages; fi",
                )
            )
        if self._description():
            # build = FALSE: `R CMD build` would first copy and tar the whole home folder (the
            # repository is the home folder, caches included), minutes for nothing.
            install = "remotes::install_local(build = FALSE, upgrade = 'never')"
            scripts.append(("${NB_USER}", f'{self.R} "{install}"'))
        return scripts

    def _install_r(self) -> str | None:
        path: str = self.binder_path("install.R")
        return path if os.path.exists(path) else None

    def _description(self) -> str | None:
        """A DESCRIPTION counts at the root only, and only without a binder/ folder."""
        return "DESCRIPTION" if not self.binder_dir and os.path.exists("DESCRIPTION") else None


def _same_version(version: str, available: str) -> bool:
    """runtime.txt's python-3 or python-3.11(.x) is Python 3.11; r-4 or r-4.2 is R 4.2.2."""
    wanted = version.split(".")
    have = available.split(".")
    return wanted[: len(have)] == have[: len(wanted)]
