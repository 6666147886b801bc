"""environment.yml: repo2docker's conda pack, by one of two routes, and the helpers that read
conda match specs.

In: the repository's environment.yml and ``BuildContext``'s conda channel alias, default
channels, package cache, package index and CA bundle. Out: the generated files (the solved
lock and a requirements list for the ``pip:`` section, or the PyPI route's requirements list),
the notes saying which route was taken and why, the staged environment and the steps and
variables that put it at repo2docker's path.

``conda`` below is bindery.builder.conda, the solver and installer (py-rattler in a child
process) this pack hands the channels and specs to; this module is the pack that decides what
to ask it and renders the result into the environment image.
"""

from __future__ import annotations

import os
import re
import shlex
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from repo2docker.utils import is_local_pip_requirement
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from bindery.builder import conda, condanames
from bindery.builder.buildpacks.base import (
    GENERATED_DIR,
    BinderyBuildPack,
    BuildContext,
    UnsupportedRepository,
)
from bindery.builder.buildpacks.python import RequirementsListBuildPack
from bindery.builder.pythons import DEFAULT_PYTHON


class EnvironmentYmlBuildPack(RequirementsListBuildPack):
    """environment.yml, as repo2docker builds it where a conda channel is configured and
    reachable: a conda environment of its own (bindery.builder.conda) at repo2docker's
    ``${CONDA_DIR}/envs/notebook`` (``envs/kernel`` for a Python older than 3.7), with the
    channel's Python at the file's ``python`` pin (Bindery's default Python without one), its
    conda dependencies solved against its ``channels:`` (only channel names, under the
    builder's channel alias; an empty list or ``defaults`` means the builder's default channels,
    ``nodefaults`` is ignored, a ``channel::`` prefix on a dependency is dropped), then its
    ``pip:`` section installed into it with uv. A dependency no channel has, or a conflict,
    fails the build with the solver's explanation.

    Jupyter stays the base image's (/srv/venv), the same tested server for every repository
    whatever the channel carries; the ``python3`` kernel is the environment's Python
    (ipykernel from the channel, or from the package index when the channel has none), and the
    environment comes first on PATH with repo2docker's variables (``CONDA_DIR``,
    ``NB_PYTHON_PREFIX``, ``KERNEL_PYTHON_PREFIX``, ``CONDA_DEFAULT_ENV``, ``MAMBA_ROOT_PREFIX``;
    ``MAMBA_EXE`` when the channel provides micromamba, which sessions then have, set up by
    ``${CONDA_DIR}/.condarc`` for the same channels).

    Without a channel (none configured, or its repodata unreachable: the log says which and
    why): its ``pip:`` section, and its conda dependencies as the PyPI distributions conda-forge's
    name mapping says they are (bindery.builder.condanames); the log names every one skipped.
    The Python is then the base image's: the one the file pins when none is configured
    (bindery.builder.pythons chooses), the default when the channel did not answer (said in
    the log)."""

    LIST = "environment-requirements.txt"
    LOCK = "environment-conda-lock.json"
    # Conda packages the base image already provides in another form (the PyPI route).
    PROVIDED = frozenset({"python", "pip"})
    # Where the environment is staged in the environment's build context.
    ENV_DIR = "conda-env"

    def __init__(self, base_image: str) -> None:
        super().__init__(base_image)
        self._notes: list[str] = []
        self._lock: conda.Lock | None = None
        self._alias = ""

    def detect(self) -> bool:
        return self._path() is not None

    def _path(self) -> str | None:
        for name in ("environment.yml", "environment.yaml"):
            path: str = self.binder_path(name)
            if os.path.exists(path):
                return path
        return None

    def pinned_python(self) -> str | None:
        """The Python (``X.Y``) environment.yml pins, as repo2docker reads it (``python=3.9``,
        ``python==3.9.7``, ``python 3.9.*``), or None when it pins none or only a major
        version."""
        pinned = self._python_pin()[0]
        return ".".join(pinned.split(".")[:2]) if pinned and "." in pinned else None

    def _python_pin(self) -> tuple[str | None, str, SpecifierSet | None]:
        """The one place that reads which Python the file asks for: see ``python_pin``."""
        where = os.path.basename(self._path() or "environment.yml")
        for spec in self._dependencies()[0]:
            if conda_name(spec).lower() == "python":
                return python_pin(spec, where)
        return None, where, None

    def notes(self) -> list[str]:
        return self._notes

    def python_asked(self) -> tuple[str | None, str, SpecifierSet | None]:
        """Without a conda environment (no channel, or none reachable), environment.yml's
        ``python`` dependency chooses the base image: ``python=3.9`` (or ``3.9.7``) pins a
        version, ``python>=3.10`` says which it accepts. With one, the environment has the
        channel's Python and the server stays on the default base image."""
        version, where, accepts = self._python_pin()
        return (version, where, accepts) if self._lock is None else (None, where, None)

    def _prefix(self) -> str:
        """The environment's path in the image, by its solved Python's version."""
        assert self._lock is not None
        return conda.env_prefix(self._lock.version("python") or DEFAULT_PYTHON)

    def overlays(self) -> list[tuple[str, str]]:
        return [(self.ENV_DIR, self._prefix())] if self._lock else []

    def stage(self, env_dir: Path, context: BuildContext) -> Iterator[str]:
        if self._lock:
            yield from conda.install(
                self._lock,
                env_dir / self.ENV_DIR,
                self._prefix(),
                Path(context.conda_pkgs_dir),
                context.ca_bundle,
            )

    def get_build_env(self) -> list[tuple[str, str]]:
        env: list[tuple[str, str]] = super().get_build_env()
        if not self._lock:
            return env
        kernel = self._prefix()
        env += [
            ("CONDA_DIR", conda.CONDA_DIR),
            # repo2docker's: where Jupyter runs (this environment, or /srv/venv beside a
            # separate kernel environment) and where the kernel's packages are.
            ("NB_PYTHON_PREFIX", kernel if kernel.endswith("/notebook") else "/srv/venv"),
            ("KERNEL_PYTHON_PREFIX", kernel),
            ("CONDA_PREFIX", "${KERNEL_PYTHON_PREFIX}"),
            ("CONDA_DEFAULT_ENV", "${KERNEL_PYTHON_PREFIX}"),
            ("MAMBA_ROOT_PREFIX", "${CONDA_DIR}"),
            ("CONDA_PLATFORM", conda.PLATFORM),
            ("PATH", "${KERNEL_PYTHON_PREFIX}/bin:${CONDA_DIR}/bin:${PATH}"),
        ]
        if self._lock.version("micromamba"):
            env.append(("MAMBA_EXE", "${KERNEL_PYTHON_PREFIX}/bin/micromamba"))
        return env

    def get_build_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_build_scripts()
        if not self._lock:
            return scripts
        # Owned by the user, as repo2docker's: micromamba in the session writes pkgs/ there.
        # Debian's /etc/profile resets PATH in login shells: the environment comes first.
        setup = (
            f"install -d -o ${{NB_USER}} -g ${{NB_USER}} {conda.CONDA_DIR} {conda.CONDA_DIR}/envs"
            " && printf '%s\\n' '# Bindery: the conda environment first, as repo2docker.'"
            " 'export PATH=\"$KERNEL_PYTHON_PREFIX/bin:$CONDA_DIR/bin:$PATH\"'"
            " > /etc/profile.d/conda-env.sh"
        )
        return [*scripts, ("root", setup)]

    def get_preassemble_scripts(self) -> list[tuple[str, str]]:
        if not self._lock:
            return super().get_preassemble_scripts()
        scripts: list[tuple[str, str]] = BinderyBuildPack.get_preassemble_scripts(self)
        python = "${KERNEL_PYTHON_PREFIX}/bin/python"
        condarc = ["channel_alias: " + self._alias, "channels:"] + [
            f"  - {name}" for name in self._lock.channels
        ]
        steps = [
            f"uv pip install --python {python} --requirement {GENERATED_DIR}/{self.LIST}",
            # The server's python3 kernel is the environment's (repo2docker: `ipython kernel
            # install --prefix ${NB_PYTHON_PREFIX}`).
            f"{python} -m ipykernel install --prefix /srv/venv --name python3"
            " --display-name 'Python 3 (ipykernel)'",
            "printf '%s\\n' "
            + " ".join(shlex.quote(line) for line in condarc)
            + " > ${CONDA_DIR}/.condarc",
        ]
        return [*scripts, ("${NB_USER}", " && ".join(steps))]

    def generated_files(self, context: BuildContext) -> dict[str, str]:
        specs, pip, _ = self._dependencies()
        self._notes = []
        self._lock = None
        self._alias = context.conda_channel_alias
        if not context.conda_channel_alias:
            self._notes.append("environment.yml: this Bindery has no conda channel configured.")
            return self._pypi_route(specs, pip, context)
        alias = context.conda_channel_alias
        names = conda.channel_names(self._channels(), context.conda_default_channels)
        # "conda-forge::numpy": the channel prefix goes, the channels listed are used.
        wanted = [spec.split("::", 1)[-1] for spec in specs]
        if self.pinned_python() is None and not any(
            conda_name(spec).lower() == "python" for spec in specs
        ):
            self._notes.append(
                f"environment.yml pins no Python: the environment gets Python {DEFAULT_PYTHON}."
            )
            wanted.append(f"python={DEFAULT_PYTHON}")
        try:
            lock = conda.resolve(
                names, wanted, alias, Path(context.conda_pkgs_dir), context.ca_bundle
            )
        except conda.ChannelUnreachable as e:
            self._notes.append(
                f"environment.yml: the conda channel(s) {', '.join(names)} at {alias} could not "
                f"be reached: {e}"
            )
            return self._pypi_route(specs, pip, context)
        self._lock = lock
        self._notes.append(
            f"environment.yml: {len(lock.records)} conda packages solved from "
            f"{', '.join(names)} at {alias} for {conda.PLATFORM}, Python "
            f"{lock.version('python')}, installed into {self._prefix()}"
            + ("; then its pip: section with uv." if pip else ".")
        )
        # The kernel needs ipykernel: from the package index when no channel has it.
        kernel = [] if lock.version("ipykernel") else ["ipykernel"]
        if kernel:
            self._notes.append(
                "environment.yml: the channels have no ipykernel: it comes from the package index."
            )
        if not lock.version("micromamba"):
            self._notes.append(
                "environment.yml: the channels have no micromamba: sessions have no conda command."
            )
        return {self.LOCK: lock.text(), **self.requirements_list(kernel + pip)}

    def generated_file_names(self) -> list[str]:
        return [self.LOCK, self.LIST] if self._lock else [self.LIST]

    def _pypi_route(
        self, specs: list[str], pip: list[str], context: BuildContext
    ) -> dict[str, str]:
        specs = [spec for spec in specs if conda_name(spec).lower() not in self.PROVIDED]
        # conda-forge's names as the PyPI distributions they are (matplotlib-base is
        # matplotlib, dask is dask[complete]); the index is asked for the distribution.
        wanted = {spec: condanames.pypi_requirement_name(conda_name(spec)) for spec in specs}
        distributions = {spec: name.split("[")[0] for spec, name in wanted.items()}
        found = packages_on_index(
            sorted(set(distributions.values())), context.index_url, context.ca_bundle
        )
        requirements = [
            conda_to_pip(spec, wanted[spec]) for spec in specs if found[distributions[spec].lower()]
        ]
        mapped = [
            f"{conda_name(spec)} -> {wanted[spec]}"
            for spec in specs
            if wanted[spec] != conda_name(spec)
        ]
        skipped = [conda_name(spec) for spec in specs if not found[distributions[spec].lower()]]
        self._notes.append(
            "environment.yml: no conda channel is reachable, so its pip: section and its conda "
            "dependencies as the PyPI distributions they are are installed with uv."
        )
        if mapped:
            self._notes.append(
                f"environment.yml: conda names mapped to PyPI ({condanames.source()}): "
                + ", ".join(mapped)
            )
        if skipped:
            self._notes.append(
                "environment.yml: skipped conda dependencies not on the package index: "
                + ", ".join(skipped)
            )
        else:
            self._notes.append("environment.yml: no conda dependency was skipped.")
        return self.requirements_list(requirements + pip)

    @lru_cache  # noqa: B019
    def get_assemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_assemble_scripts()
        local = self._dependencies()[2]
        if local:
            # pip: lines like "-e ." or "-r requirements.txt" are relative to environment.yml.
            folder = os.path.dirname(self._path() or "") or "."
            installs = [
                "uv pip install " + " ".join(shlex.quote(word) for word in shlex.split(line))
                for line in local
            ]
            scripts.append(("${NB_USER}", f"cd {folder} && " + " && ".join(installs)))
        return scripts

    @lru_cache  # noqa: B019
    def _environment(self) -> dict[str, Any]:
        path = self._path()
        assert path is not None
        try:
            with open(path) as f:
                env = YAML(typ="safe").load(f) or {}
        except (OSError, YAMLError) as e:
            raise UnsupportedRepository(f"{path} is not valid YAML: {e}") from e
        if not isinstance(env, dict):
            raise UnsupportedRepository(f"{path}: not a mapping of channels and dependencies")
        for key in ("dependencies", "channels"):
            if not isinstance(env.get(key) or [], list):
                raise UnsupportedRepository(f"{path}: '{key}' must be a list")
        return env

    def _channels(self) -> list[str]:
        return [str(channel) for channel in self._environment().get("channels") or []]

    @lru_cache  # noqa: B019
    def _dependencies(self) -> tuple[list[str], list[str], list[str]]:
        """(conda specs, pip requirements, pip lines that name local files)."""
        path = self._path()
        env = self._environment()
        specs: list[str] = []
        pip: list[str] = []
        local: list[str] = []
        for item in env.get("dependencies") or []:
            if isinstance(item, dict) and isinstance(item.get("pip"), list):
                for line in map(str, item["pip"]):
                    (local if is_local_pip_requirement(line) else pip).append(line)
            elif isinstance(item, str | int | float):
                spec = str(item).strip()
                if not CONDA_SPEC.fullmatch(spec):
                    raise UnsupportedRepository(f"{path}: cannot read dependency {spec!r}")
                specs.append(spec)
            else:
                raise UnsupportedRepository(f"{path}: cannot read dependency {item!r}")
        return specs, pip, local


# A conda match spec as environment.yml files write them: [channel::]name[ version[ build]] or
# name=version[=build], name>=version, ...
CONDA_SPEC = re.compile(
    r"(?:(?P<channel>[A-Za-z0-9_./:-]+)::)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*)"
    r"\s*(?P<version>[=<>!~]{0,2}\s*[A-Za-z0-9_.*+,<>=!~| -]*)"
)


def conda_name(spec: str) -> str:
    match = CONDA_SPEC.fullmatch(spec.strip())
    assert match is not None
    return match["name"]


def python_pin(spec: str, where: str) -> tuple[str | None, str, SpecifierSet | None]:
    """A conda ``python`` spec as (pinned version, ``where``, accepted versions)."""
    requirement = conda_to_pip(spec)[len("python") :]
    if not requirement:
        return None, where, None
    pinned = re.fullmatch(r"==\s*([0-9]+(?:\.[0-9]+){0,2})(?:\.\*)?", requirement)
    if pinned:
        return pinned[1], where, None
    try:
        return None, where, SpecifierSet(requirement)
    except InvalidSpecifier as e:
        raise UnsupportedRepository(f"{where}: cannot read {spec!r}: {e}") from e


def conda_to_pip(spec: str, name: str = "") -> str:
    """``numpy=1.26`` -> ``numpy==1.26.*`` (conda's ``=`` is a prefix match), ``numpy>=1.2``
    stays; a build string (``=py_0`` or a second word) is dropped. ``name``: the PyPI
    requirement name to use instead of the conda name."""
    match = CONDA_SPEC.fullmatch(spec.strip())
    assert match is not None
    name, version = name or match["name"], match["version"].strip()
    if not version:
        return name
    if version[0] in "<>!~" or version.startswith("=="):
        if "|" in version:
            raise UnsupportedRepository(f"conda version {version!r}: '|' has no pip equivalent")
        # ">= 1.2 ,<2 py_0" -> ">=1.2,<2": spaces around operators go, a build string too.
        return name + re.sub(r"\s*([<>=!~,]+)\s*", r"\1", version).split()[0]
    version = version.lstrip("=").split("=")[0].split()[0]
    return f"{name}=={version}" if version.endswith("*") else f"{name}=={version}.*"


def packages_on_index(names: list[str], index_url: str, ca_bundle: str) -> dict[str, bool]:
    """Which of ``names`` the index's simple API has (normalised, lower-case keys)."""
    context = ssl.create_default_context(cafile=ca_bundle or None)

    def exists(name: str) -> bool:
        url = f"{index_url.rstrip('/')}/{canonicalize_name(name)}/"
        request = urllib.request.Request(url, method="HEAD")  # noqa: S310 -- the configured index
        try:
            with urllib.request.urlopen(request, timeout=20, context=context):  # noqa: S310
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise UnsupportedRepository(f"The package index {index_url} answered {e.code}") from e
        except OSError as e:
            raise UnsupportedRepository(f"The package index {index_url} is unreachable: {e}") from e

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip((n.lower() for n in names), pool.map(exists, names), strict=True))
