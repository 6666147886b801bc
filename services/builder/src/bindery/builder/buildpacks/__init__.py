"""Bindery's buildpacks: a repository's environment as an image of its own, the repository at its
commit as a thin last layer on top.

In: the checked-out repository (repo2docker calls us with it as the working directory) and
``BuildContext`` (through repo2docker's ``extra_build_kwargs``). Out: two ``podman build`` runs
through the engine -- the environment image ``<env repository>:<key>``, skipped when it exists
(locally or in the registry), then the requested image ``FROM`` it -- and their log lines.

The environment key is a hash of everything the environment stage sees: its Dockerfile (which
names the base image and holds every install command), the environment files it copies, and
``BUILDPACK_VERSION``. A commit that changes only notebooks, data or code has the same key, so
it costs one ``COPY`` of the repository, its labels, and the steps repo2docker defines as needing
the whole repository (``pip install .``, requirements that name local paths, postBuild).

Configuration files, in repo2docker's detection order and meaning: Dockerfile (built as it is),
Project.toml / REQUIRE, default.nix, install.R / DESCRIPTION / runtime.txt ``r-``, environment.yml,
Pipfile / Pipfile.lock, requirements.txt / setup.py / pyproject.toml / runtime.txt ``python-``;
apt.txt, postBuild and start with all of them; binder/ or .binder/ is then the only place read,
its .dockerignore/.containerignore included (they decide what the repository's layer copies,
the configuration files always kept).
repo2docker's own template cannot run here (it installs micromamba and conda packages, whose
hosts are unreachable), so each pack renders its own, on a shared base image (a Debian suite's
Python and Jupyter in /srv/venv, user jovyan): the one of the Python the repository asks for
(bindery.builder.pythons chooses), installing with uv and its shared cache mount.

Modules, as repo2docker's buildpacks package: ``base`` (the two-stage build every pack shares,
``BuildContext``, the templates), ``python`` (requirements.txt, setup.py, pyproject.toml),
``pipfile``, ``conda`` (environment.yml), ``r``, ``nix``, ``julia`` (refused: no host) and
``docker`` (a repository's own Dockerfile). This package says the detection order.
"""

from __future__ import annotations

from repo2docker.buildpacks.base import BaseImage

from bindery.builder.buildpacks.base import BuildContext, BuildWarning
from bindery.builder.buildpacks.conda import EnvironmentYmlBuildPack
from bindery.builder.buildpacks.docker import CheckedDockerBuildPack
from bindery.builder.buildpacks.julia import JuliaBuildPack
from bindery.builder.buildpacks.nix import NixBuildPack
from bindery.builder.buildpacks.pipfile import PipfileBuildPack
from bindery.builder.buildpacks.python import PythonBuildPack
from bindery.builder.buildpacks.r import RBuildPack

# What buildchild needs; each pack and helper is imported from its own module.
__all__ = ["BUILDPACKS", "DEFAULT_BUILDPACK", "BuildContext", "BuildWarning"]

# repo2docker's detection order; the first whose detect() says yes builds the repository.
BUILDPACKS: list[type[BaseImage]] = [
    CheckedDockerBuildPack,
    JuliaBuildPack,
    NixBuildPack,
    RBuildPack,
    EnvironmentYmlBuildPack,
    PipfileBuildPack,
    PythonBuildPack,
]
DEFAULT_BUILDPACK = PythonBuildPack
