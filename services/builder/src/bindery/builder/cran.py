"""The CRAN mirror R builds install packages from: the builder's ``cran_mirror`` setting.

In: the setting's value, one of
- an http(s) URL of a CRAN-like repository (a CRAN mirror, an internal Posit Package Manager):
  builds install from it and sessions keep it as R's default repository;
- an absolute host directory laid out as a CRAN repository (``src/contrib/PACKAGES`` and the
  tarballs, what an rsync of CRAN or miniCRAN makes): bind-mounted read-only into build steps at
  ``CRAN_MOUNT`` (never into a layer) and used as a ``file://`` repository during the build only.
Out: ``check_mirror_setting`` (the setting's validator), ``CranMirror`` (the mount a build needs,
what is wrong with a directory that is not a repository) and ``rprofile`` (the lines appended to
R's Rprofile.site in the image, which point R at the mirror).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bindery.builder.mirrors import checked_url_or_directory

# Where a directory mirror is seen inside build steps.
CRAN_MOUNT = "/run/bindery/cran"
# Sessions of images built from a directory mirror cannot see it (it is mounted in build steps
# only): their R gets the public CRAN, which works wherever sessions may reach it, and keeps
# install.packages() from asking interactively for a mirror where they may not.
PUBLIC_CRAN = "https://cloud.r-project.org"
# The index files R's available.packages() reads, any one of which makes a repository.
INDEX_FILES = ("PACKAGES", "PACKAGES.gz", "PACKAGES.rds")


def check_mirror_setting(value: str) -> str:
    """The setting, normalised; ValueError saying what is wrong with it."""
    return checked_url_or_directory(value, "CRAN mirror")


@dataclass(frozen=True)
class CranMirror:
    """A checked ``cran_mirror`` setting (``check_mirror_setting``'s output, not empty)."""

    setting: str

    @property
    def is_directory(self) -> bool:
        return self.setting.startswith("/")

    @property
    def build_repos(self) -> str:
        """The repository URL R uses inside build steps."""
        return f"file://{CRAN_MOUNT}" if self.is_directory else self.setting

    @property
    def session_repos(self) -> str:
        """The repository URL sessions' R keeps as its default."""
        return PUBLIC_CRAN if self.is_directory else self.setting

    def volumes(self) -> list[str]:
        """``podman build --volume`` values the build needs: the directory, read-only."""
        return [f"{self.setting}:{CRAN_MOUNT}:ro"] if self.is_directory else []

    def problem(self) -> str:
        """Why this mirror cannot serve a build, or ``""``: a directory must hold an index."""
        if not self.is_directory:
            return ""
        contrib = os.path.join(self.setting, "src", "contrib")
        indexes = [os.path.join(contrib, name) for name in INDEX_FILES]
        indexes = [path for path in indexes if os.path.isfile(path)]
        if not indexes:
            return (
                "The CRAN mirror directory configured for this Bindery has no package index "
                "(src/contrib/PACKAGES): ask its operator to check the mirror."
            )
        # Packages are installed as the image's user, for whom the mount is "others".
        folders = [self.setting, os.path.dirname(contrib), contrib]
        if not all(_others_may(path, 0o005) for path in folders) or not all(
            _others_may(path, 0o004) for path in indexes
        ):
            return (
                "The CRAN mirror directory configured for this Bindery is not readable by "
                "everyone, so builds (which install as an unprivileged user) cannot read it: "
                "ask its operator to check the mirror's permissions."
            )
        return ""

    def describe(self) -> str:
        """For the build log: where packages come from (a directory's path is the host's own)."""
        if self.is_directory:
            return (
                "R packages come from this Bindery's local CRAN mirror (mounted during the build "
                f"only; sessions get {PUBLIC_CRAN} as their repository)."
            )
        return f"R packages come from the CRAN mirror {self.setting}."


def _others_may(path: str, bits: int) -> bool:
    return os.stat(path).st_mode & bits == bits


def rprofile(mirror: CranMirror) -> str:
    """R code for Rprofile.site: the mirror while building, the session's repository after."""
    lines = ["# Bindery: R's package repository (the builder's cran_mirror setting)."]
    if mirror.is_directory:
        lines += [
            "local({",
            f'    repos <- "{mirror.session_repos}"',
            "    # The local mirror is mounted in build steps only.",
            f'    if (dir.exists("{CRAN_MOUNT}/src/contrib")) repos <- "{mirror.build_repos}"',
            "    options(repos = c(CRAN = repos))",
            "})",
        ]
    else:
        lines.append(f'options(repos = c(CRAN = "{mirror.session_repos}"))')
    return "\n".join(lines) + "\n"
