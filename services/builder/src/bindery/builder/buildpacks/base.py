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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import ssl
import tempfile
import textwrap
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from repo2docker.buildpacks.base import HERE as REPO2DOCKER_FILES
from repo2docker.buildpacks.base import BaseImage
from repo2docker.buildpacks.docker import DockerBuildPack
from repo2docker.utils import is_local_pip_requirement, open_guess_encoding
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from bindery.builder import conda, condanames, nixpack
from bindery.builder.cran import CranMirror, rprofile
from bindery.builder.dockerfile import check_dockerfile
from bindery.builder.pythons import DEFAULT_PYTHON, Choice, Pythons, PythonUnavailable
from bindery.builder.registrymirror import fetch_base_images

# Part of every environment key: bump it when a change here changes what an environment holds.
BUILDPACK_VERSION = "2"
# Debian bookworm's r-base-core: the only R builds can install (no other R binaries reachable).
R_VERSION = "4.2.2"
# Where generated install lists (Pipfile, environment.yml) land in the environment image, so
# what was installed can be read in the session.
GENERATED_DIR = "/usr/local/share/bindery"


class UnsupportedRepository(RuntimeError):
    """The repository asks for something this Bindery cannot build; the message says what."""


class BuildWarning(str):
    """A build log line the person launching must see (the protocol's phase ``warning``):
    something of the repository was not built as it asked."""


@dataclass(frozen=True)
class BuildContext:
    """What the host tells the buildpacks, handed through repo2docker's extra_build_kwargs."""

    env_repository: str = "localhost/bindery-env"
    """Environment images are ``<env_repository>:<key>``."""
    push_env: bool = False
    """Push a newly built environment image, so other builder hosts pull it instead."""
    index_url: str = "https://pypi.org/simple"
    """The package index (simple API) environment.yml's conda dependencies are looked up in."""
    ca_bundle: str = ""
    conda_channel_alias: str = ""
    """conda's channel_alias: channel ``NAME`` is ``<alias>/NAME``. Empty: no conda channel,
    environment.yml takes the PyPI route."""
    conda_default_channels: tuple[str, ...] = ("conda-forge",)
    """The channels of an environment.yml that lists none (or lists ``defaults``)."""
    conda_pkgs_dir: str = conda.DEFAULT_PKGS_DIR
    """Where conda archives and repodata are cached, shared by builds, never in an image."""
    cran_mirror: str = ""
    """The builder's checked cran_mirror setting (bindery.builder.cran); empty: none, and R
    repositories fail at once."""
    nix_channel: str = ""
    """The builder's checked nix_channel setting (bindery.builder.nixpack); empty: none, and a
    default.nix that asks for <nixpkgs> or the network fails at once."""
    nix_substituters: tuple[str, ...] = ()
    """The builder's checked nix_substituters: binary caches build steps substitute from."""
    repo_url: str = ""
    """The repository's URL: names its own uv cache (repository_cache_id)."""
    registry_mirror: str = ""
    """The builder's checked registry_mirror setting (bindery.builder.registrymirror): where a
    Dockerfile's Docker Hub images come from; empty: only from the builder's store."""
    pythons: Pythons | None = None
    """The Pythons there are base images for; None: only the pack's own base image, as the
    default Python."""


# Sourced by every build step: the CA bundle and package index the build was handed as secrets
# (never in a layer). build-ca.sh comes with the base image.
BUILD_ENV_SCRIPT = """\
# Bindery: sourced by build steps; sets up TLS trust and the package index from build secrets.
. /usr/local/lib/bindery/build-ca.sh
if [ -r /run/secrets/pipindex ]; then
    PIP_INDEX_URL=$(cat /run/secrets/pipindex)
    UV_DEFAULT_INDEX=$PIP_INDEX_URL
    export PIP_INDEX_URL UV_DEFAULT_INDEX
    # The builder's index forwarder (plain http on the host) is trusted as it is.
    case $PIP_INDEX_URL in
        http://*) host=${PIP_INDEX_URL#http://}; host=${host%%/*}
                  export PIP_TRUSTED_HOST=$host UV_INSECURE_HOST=$host ;;
    esac
fi
"""
BUILD_ENV_PATH = "/usr/local/lib/bindery/build-env.sh"

# After the base image's profile.d script (bindery-venv.sh), so these come first as in ENV PATH.
SESSION_PATH_SCRIPT = """\
# Bindery: repo2docker's PATH for login shells (Debian's /etc/profile resets PATH).
export PATH="$HOME/.local/bin:$REPO_DIR/.local/bin:$PATH"
"""

# Where repo2docker reads the repository's own ignore files (binder_path: binder/ or .binder/
# when there is one, else the root); their patterns decide what the content image copies.
IGNORE_FILES = (".dockerignore", ".containerignore")
# Configuration files repo2docker reads from where binder_path says: whatever an ignore file
# lists, these stay in the build context, since the image's steps run or install them.
CONFIG_FILES = (
    "apt.txt",
    "environment.yml",
    "install.R",
    "Pipfile",
    "Pipfile.lock",
    "postBuild",
    "requirements.txt",
    "runtime.txt",
    "start",
    "default.nix",
)

# Every script step gets the build's CA bundle and package index (secrets, skipped silently when
# the build has none). Steps that run the repository's own scripts also get a uv download cache
# (a cache mount, never in an image) of their own: per environment key in the environment image,
# per repository in the content image. No step ever mounts another repository's cache, so a
# build that plants code in its cache changes only its own installs. The shared steps of a kind
# (get_build_scripts, the same for every repository of it) mount none.
SHARED_RUN_PREFIX = (
    "RUN --mount=type=secret,id=pipca,target=/run/secrets/pipca,mode=0444"
    " --mount=type=secret,id=pipindex,target=/run/secrets/pipindex,mode=0444"
    f" . {BUILD_ENV_PATH} &&"
)
# The environment's cache id is known only once its context (this Dockerfile included) is
# hashed: the Dockerfile says this placeholder, and the written one the id.
ENV_CACHE_ID = "@ENV_CACHE_ID@"


def run_prefix(cache_id: str) -> str:
    """RUN with the build's secrets and the uv cache ``cache_id``."""
    return SHARED_RUN_PREFIX.replace(
        " . ",
        f" --mount=type=cache,id={cache_id},target=/home/jovyan/.cache/uv,uid=1000,gid=1000 . ",
        1,
    )


def repository_cache_id(repo_url: str) -> str:
    """The uv cache of one repository's content steps."""
    return "uv-repo-" + hashlib.sha256(repo_url.encode()).hexdigest()[:32]


def _quoted(value: object) -> str:
    """A Dockerfile double-quoted string: labels carry the repository URL, a stranger's text."""
    text = " ".join(str(value).splitlines())
    # Backslash first, then what it escapes: quotes end the string, $ expands variables.
    for special in ("\\", '"', "$"):
        text = text.replace(special, "\\" + special)
    return f'"{text}"'


_JINJA = jinja2.Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True)  # noqa: S701 -- renders a Dockerfile, not HTML
_JINJA.filters["quoted"] = _quoted

ENV_TEMPLATE = _JINJA.from_string(
    r"""FROM {{ base_image }}

# Start-up as repo2docker images do: a login shell's environment, then the repository's start
# script if it has one. tini reaps the processes kernels and terminals leave behind.
USER root
ENV PYTHONUNBUFFERED=1 NB_USER={{ user }} NB_UID={{ uid }} REPO_DIR={{ repo_dir }}
COPY --chmod=0755 python3-login /usr/local/bin/python3-login
COPY --chmod=0755 repo2docker-entrypoint /usr/local/bin/repo2docker-entrypoint
COPY --chmod=0644 build-env.sh {{ build_env_path }}
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/repo2docker-entrypoint"]
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
WORKDIR ${REPO_DIR}
# repo2docker's: what postBuild or the session installs with `pip install --user`, and a
# repository's own .local/bin, are on PATH; again in login shells, whose PATH Debian resets.
ENV PATH=${HOME}/.local/bin:${REPO_DIR}/.local/bin:${PATH}
COPY --chmod=0644 session-path.sh /etc/profile.d/repo2docker-path.sh
# A venv refuses `pip install --user` and hides the user's site-packages; repo2docker's conda
# environment has both, and postBuild scripts written for it use them.
RUN sed -i 's/^include-system-site-packages = false$/include-system-site-packages = true/' \
        /srv/venv/pyvenv.cfg
{% for name, value in build_env %}
ENV {{ name }}={{ value }}
{% endfor %}
{% for directive in build %}
{{ directive }}
{% endfor %}
{% for name in generated %}
COPY --chmod=0644 generated/{{ name }} {{ generated_dir }}/{{ name }}
{% endfor %}
{% for src, dst in overlays %}
COPY --chown={{ uid }}:{{ uid }} {{ src }}/ {{ dst }}/
{% endfor %}
{% for src, dst in files|dictsort %}
COPY --chown={{ uid }}:{{ uid }} src/{{ src }} ${REPO_DIR}/{{ dst }}
{% endfor %}
{% for directive in preassemble %}
{{ directive }}
{% endfor %}
{% for name, value in env %}
ENV {{ name }}={{ value }}
{% endfor %}
USER ${NB_USER}
"""
)

CONTENT_TEMPLATE = _JINJA.from_string(
    r"""FROM {{ env_image }}

# The repository at its commit: everything above is the environment image.
COPY --chown={{ uid }}:{{ uid }} . ${REPO_DIR}/
{% for directive in assemble %}
{{ directive }}
{% endfor %}
{% if labels %}
LABEL{% for name, value in labels|dictsort %} {{ name }}={{ value|quoted }}{% endfor %}

{% endif %}
{% for script in post_build_scripts %}
RUN chmod +x {{ script }}
{{ run_prefix }} ./{{ script }}
{% endfor %}
{% if start_script %}
RUN chmod +x "{{ start_script }}"
ENV R2D_ENTRYPOINT="{{ start_script }}"
{% endif %}
{% if appendix %}
{{ appendix }}
{% endif %}
"""
)


class BinderyBuildPack(BaseImage):  # type: ignore[misc]
    """The two-stage build every Python-based pack shares; apt.txt, postBuild and start as
    repo2docker's BaseImage reads them. Subclasses add install steps."""

    def configure(self, context: BuildContext) -> None:
        """Take what this pack needs of the host's settings, before check(); raise
        UnsupportedRepository when they cannot build this kind of repository."""

    def check(self) -> None:
        """Raise UnsupportedRepository before any work if the repository asks for the impossible."""

    base_image: str
    """What repo2docker made the pack with (the default Python's), until ``choose_python``."""
    python_version = DEFAULT_PYTHON
    """The Python the environment is built on: ``choose_python`` sets it."""

    def python_asked(self) -> tuple[str | None, str, SpecifierSet | None]:
        """(the Python version the repository pins or None, the file that says so, the versions
        it accepts or None)."""
        name, version, _ = self.runtime
        if name == "python" and version:
            return version, "runtime.txt", None
        return None, "runtime.txt", None

    def choose_python(self, context: BuildContext) -> Choice:
        """Build on the base image of the Python the repository asks for (or the nearest)."""
        pythons = context.pythons or Pythons(((DEFAULT_PYTHON, self.base_image),), DEFAULT_PYTHON)
        try:
            choice = pythons.choose(*self.python_asked())
        except PythonUnavailable as e:
            raise UnsupportedRepository(str(e)) from e
        self.python_version = choice.version
        self.base_image = choice.image
        return choice

    def generated_files(self, context: BuildContext) -> dict[str, str]:
        """Install lists made from the repository's files, copied to GENERATED_DIR."""
        return {}

    def notes(self) -> list[str]:
        """Lines for the build log that say what was made of the repository's files."""
        return []

    def overlays(self) -> list[tuple[str, str]]:
        """(directory of the environment context, image path) pairs copied onto the image
        after the generated files; ``stage`` fills the directories."""
        return []

    def stage(self, env_dir: Path, context: BuildContext) -> Iterator[str]:
        """Fill the overlays in ``env_dir`` (log lines out): only when the environment image
        is built, so what they hold is not hashed into its key (the generated files say it)."""
        return iter(())

    def volumes(self, context: BuildContext) -> list[str]:
        """Host directories build steps see (``podman build --volume``), never in a layer."""
        return []

    def render_env(self, build_args: dict[str, str], generated: list[str]) -> str:
        return ENV_TEMPLATE.render(
            base_image=self.base_image,
            user=build_args.get("NB_USER", "jovyan"),
            uid=build_args.get("NB_UID", "1000"),
            repo_dir=build_args.get("REPO_DIR", f"/home/{build_args.get('NB_USER', 'jovyan')}"),
            build_env_path=BUILD_ENV_PATH,
            build_env=self.get_build_env(),
            # Independent of the repository, so podman's layer cache shares them between
            # repositories of the same kind: before anything of the repository is copied.
            build=_directives(self.get_build_scripts(), prefix=SHARED_RUN_PREFIX),
            generated=generated,
            generated_dir=GENERATED_DIR,
            overlays=self.overlays(),
            files=self.get_preassemble_script_files(),
            preassemble=_directives(
                self.get_preassemble_scripts(), prefix=run_prefix(ENV_CACHE_ID)
            ),
            env=self.get_env(),
        )

    def render_content(self, build_args: dict[str, str], env_image: str, repo_url: str) -> str:
        prefix = run_prefix(repository_cache_id(repo_url))
        return CONTENT_TEMPLATE.render(
            env_image=env_image,
            uid=build_args.get("NB_UID", "1000"),
            # The environment image ends as the user: back to it after root's steps.
            assemble=_directives(self.get_assemble_scripts(), prefix, start="${NB_USER}"),
            labels=self.get_labels(),
            post_build_scripts=self.get_post_build_scripts(),
            start_script=self.get_start_script(),
            appendix=self.appendix,
            run_prefix=prefix,
        )

    def render(self, build_args: dict[str, str] | None = None) -> str:
        """Both Dockerfiles, for repo2docker's debug log (the environment's name is its key)."""
        build_args = build_args or {}
        env = self.render_env(build_args, sorted(self.generated_file_names()))
        content = self.render_content(build_args, "<environment image>", "<repository>")
        return env + "\n" + content

    def generated_file_names(self) -> list[str]:
        return []

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
        """Make (or find) the environment image, then the image ``FROM`` it with the repository."""
        context: BuildContext = extra_build_kwargs.get("bindery") or BuildContext()
        self.configure(context)
        self.check()
        volumes = self.volumes(context)
        with tempfile.TemporaryDirectory(prefix="bindery-env-") as scratch:
            generated = self.generated_files(context)
            # After the generated files: environment.yml's pin chooses the base image only when
            # no conda environment (with the channel's Python) was solved.
            choice = self.choose_python(context)
            yield f"Python {choice.version}, on {choice.image}\n"
            if choice.warning:
                yield BuildWarning(choice.warning + "\n")
            yield from (note + "\n" for note in self.notes())
            env_dir = Path(scratch, "env")
            self._write_env_context(env_dir, build_args, generated)
            env_key = context_digest(env_dir)
            env_image = f"{context.env_repository}:{env_key}"
            env_dockerfile = env_dir / "Dockerfile"
            env_dockerfile.write_text(
                env_dockerfile.read_text().replace(ENV_CACHE_ID, f"uv-env-{env_key}")
            )
            if client.inspect_image(env_image) is not None:
                yield f"Environment {env_image} exists: adding the repository only\n"
            elif context.push_env and client.pull(env_image):
                yield f"Environment {env_image} pulled from the registry\n"
            else:
                yield f"Building the environment {env_image}\n"
                yield from self.stage(env_dir, context)
                yield from client.build(
                    path=str(env_dir),
                    tag=env_image,
                    buildargs=build_args,
                    platform=platform,
                    volumes=volumes,
                )
                if context.push_env:
                    yield from client.push(env_image)
            dockerfile = Path(scratch, "Dockerfile.content")
            dockerfile.write_text(self.render_content(build_args, env_image, context.repo_url))
            ignorefile = Path(scratch, "content.ignore")
            ignorefile.write_text(self.context_ignores())
            yield from client.build(
                path=os.getcwd(),
                dockerfile=str(dockerfile),
                ignorefile=str(ignorefile),
                tag=image_spec,
                buildargs=build_args,
                platform=platform,
                volumes=volumes,
            )

    def context_ignores(self) -> str:
        """The content build's ignore file: the patterns of the repository's .dockerignore and
        .containerignore where repo2docker reads them (so a root file listing ``binder/`` does
        not hide a binder/ folder), then exceptions that keep the configuration files in."""
        patterns = []
        for name in IGNORE_FILES:
            path = self.binder_path(name)
            if os.path.isfile(path):
                lines = (
                    line.strip() for line in Path(path).read_text(errors="replace").splitlines()
                )
                patterns += [line for line in lines if line and not line.startswith("#")]
        kept = [self.binder_path(name) for name in CONFIG_FILES]
        patterns += [f"!{path}" for path in kept if os.path.exists(path)]
        return "".join(f"{pattern}\n" for pattern in patterns)

    def _write_env_context(
        self, env_dir: Path, build_args: dict[str, str], generated: dict[str, str]
    ) -> None:
        (env_dir / "generated").mkdir(parents=True)
        (env_dir / "Dockerfile").write_text(self.render_env(build_args, sorted(generated)))
        (env_dir / "build-env.sh").write_text(BUILD_ENV_SCRIPT)
        (env_dir / "session-path.sh").write_text(SESSION_PATH_SCRIPT)
        for name in ("python3-login", "repo2docker-entrypoint"):
            (env_dir / name).write_bytes(Path(REPO2DOCKER_FILES, name).read_bytes())
        for name, content in generated.items():
            (env_dir / "generated" / name).write_text(content)
        for src in self.get_preassemble_script_files():
            target = env_dir / "src" / src
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(src).read_bytes())


class PythonBuildPack(BinderyBuildPack):
    """requirements.txt into the base image's venv; setup.py or an installable pyproject.toml
    installed with the repository (``pip install .``), as repo2docker does when no binder/ is."""

    def detect(self) -> bool:
        name = self.runtime[0]
        if name:
            return bool(name == "python")
        return self._is_python_package() or self._requirements_file() is not None

    def python_asked(self) -> tuple[str | None, str, SpecifierSet | None]:
        version, where, _ = super().python_asked()
        if version is not None:
            return version, where, None
        # Installed with the repository (pip install .), so its requires-python must hold.
        requires = self._pyproject().get("project", {}).get("requires-python")
        if self._is_python_package() and isinstance(requires, str):
            try:
                return None, "pyproject.toml", SpecifierSet(requires)
            except InvalidSpecifier as e:
                raise UnsupportedRepository(f"pyproject.toml: requires-python: {e}") from e
        return None, where, None

    @lru_cache  # noqa: B019 -- repo2docker's buildpacks cache every hook per instance
    def get_preassemble_script_files(self) -> dict[str, str]:
        files: dict[str, str] = super().get_preassemble_script_files()
        requirements = self._requirements_file()
        if requirements and self._requirements_are_self_contained():
            files[requirements] = requirements
        return files

    @lru_cache  # noqa: B019
    def get_preassemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_preassemble_scripts()
        if self._requirements_are_self_contained():
            scripts += self._pip_scripts()
        return scripts

    @lru_cache  # noqa: B019
    def get_assemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_assemble_scripts()
        # A requirements file that names other files (-r, -e ., ./pkg) needs the whole repository.
        if not self._requirements_are_self_contained():
            scripts += self._pip_scripts()
        if self._is_python_package():
            scripts.append(("${NB_USER}", "uv pip install ."))
        return scripts

    def _requirements_file(self) -> str | None:
        path: str = self.binder_path("requirements.txt")
        return path if os.path.exists(path) else None

    def _requirements_are_self_contained(self) -> bool:
        requirements = self._requirements_file()
        if requirements is None:
            return True
        with open_guess_encoding(requirements) as f:
            return not any(is_local_pip_requirement(line) for line in f)

    def _pip_scripts(self) -> list[tuple[str, str]]:
        requirements = self._requirements_file()
        if requirements is None:
            return []
        # Relative to ${REPO_DIR}, the working directory, where the file was copied.
        return [("${NB_USER}", f'uv pip install --requirement "{requirements}"')]

    @lru_cache  # noqa: B019
    def _pyproject(self) -> dict[str, Any]:
        if self.binder_dir or not os.path.exists("pyproject.toml"):
            return {}
        try:
            with open("pyproject.toml", "rb") as f:
                return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise UnsupportedRepository(f"pyproject.toml is not valid TOML: {e}") from e

    def _is_python_package(self) -> bool:
        """repo2docker's rule: setup.py, or pyproject.toml with [project] and [build-system],
        and only when there is no binder/ folder."""
        if self.binder_dir:
            return False
        pyproject = self._pyproject()
        installable = "project" in pyproject and "build-system" in pyproject
        return os.path.exists("setup.py") or installable


class _RequirementsListBuildPack(BinderyBuildPack):
    """A pack that turns the repository's files into one requirements list, `LIST`, installed
    with uv in the environment image (the list, not the repository, decides that image)."""

    LIST: str

    def generated_file_names(self) -> list[str]:
        return [self.LIST]

    def requirements_list(self, requirements: list[str]) -> dict[str, str]:
        """`generated_files` for these requirements, one a line."""
        return {self.LIST: "".join(f"{line}\n" for line in requirements)}

    def get_preassemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_preassemble_scripts()
        install = f"uv pip install --requirement {GENERATED_DIR}/{self.LIST}"
        return [*scripts, ("${NB_USER}", install)]


class PipfileBuildPack(_RequirementsListBuildPack):
    """Pipfile.lock (or Pipfile without one), default and dev packages, as repo2docker's
    ``pipenv install --dev`` would; installed with uv from a list made of them. Local paths
    (``{path = "."}``) are installed with the repository."""

    LIST = "pipfile-requirements.txt"

    def detect(self) -> bool:
        name = self.runtime[0]
        if name and name != "python":
            return False
        return any(os.path.exists(self.binder_path(f)) for f in ("Pipfile", "Pipfile.lock"))

    def generated_files(self, context: BuildContext) -> dict[str, str]:
        return self.requirements_list(self._requirements()[0])

    @lru_cache  # noqa: B019
    def get_assemble_scripts(self) -> list[tuple[str, str]]:
        scripts: list[tuple[str, str]] = super().get_assemble_scripts()
        local = self._requirements()[1]
        if local:
            # Pipfile paths are relative to the Pipfile's folder.
            folder = self.binder_dir or "."
            scripts.append(("${NB_USER}", f"cd {folder} && uv pip install {' '.join(local)}"))
        return scripts

    @lru_cache  # noqa: B019
    def _requirements(self) -> tuple[list[str], list[str]]:
        """(requirements for the environment, install arguments for local paths)."""
        lock = self.binder_path("Pipfile.lock")
        try:
            if os.path.exists(lock):
                with open(lock) as f:
                    data = json.load(f)
                sections = [data.get("default", {}), data.get("develop", {})]
            else:
                with open(self.binder_path("Pipfile"), "rb") as f:
                    data = tomllib.load(f)
                sections = [data.get("packages", {}), data.get("dev-packages", {})]
        except (ValueError, OSError) as e:
            raise UnsupportedRepository(f"Could not read {lock} or its Pipfile: {e}") from e
        requirements: list[str] = []
        local: list[str] = []
        for section in sections:
            for name, entry in section.items():
                requirement, path = pipfile_requirement(name, entry)
                if path is not None:
                    local.append(path)
                else:
                    requirements.append(requirement)
        return requirements, local


def pipfile_requirement(name: str, entry: object) -> tuple[str, str | None]:
    """One Pipfile/Pipfile.lock entry as a requirement line, or (``""``, install args) for a
    local path. Raises UnsupportedRepository for an entry it cannot read."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UnsupportedRepository(f"Pipfile: invalid package name {name!r}")
    if isinstance(entry, str):
        return (name if entry.strip() in ("", "*") else f"{name}{entry.strip()}"), None
    if not isinstance(entry, dict):
        raise UnsupportedRepository(f"Pipfile: cannot read the entry for {name}")
    if "path" in entry:
        path = str(entry["path"])
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", path):
            raise UnsupportedRepository(f"Pipfile: unsupported path {path!r} for {name}")
        return "", (f"--editable {path}" if entry.get("editable") else path)
    extras = entry.get("extras") or []
    spec = name + (f"[{','.join(extras)}]" if extras else "")
    if "git" in entry:
        ref = f"@{entry['ref']}" if entry.get("ref") else ""
        spec = f"{spec} @ git+{entry['git']}{ref}"
    elif "file" in entry:
        spec = f"{spec} @ {entry['file']}"
    else:
        version = str(entry.get("version", "*")).strip()
        spec += "" if version in ("", "*") else version
    if entry.get("markers"):
        spec += f"; {entry['markers']}"
    return spec, None


class EnvironmentYmlBuildPack(_RequirementsListBuildPack):
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


class _MissingHost(BaseImage):  # type: ignore[misc]
    """A kind of environment whose packages come from a host this Bindery cannot reach: the
    build fails at once, naming the host, instead of after minutes of retries."""

    WHAT = ""
    HOST = ""

    def render(self, build_args: dict[str, str] | None = None) -> str:
        return ""

    def build(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        raise UnsupportedRepository(missing_host(self.WHAT, self.HOST))


def missing_host(what: str, host: str) -> str:
    return (
        f"This repository needs {what}, which come from {host}. This Bindery cannot reach "
        f"{host} and has no mirror of it configured, so it cannot build this repository."
    )


class JuliaBuildPack(_MissingHost):
    WHAT = "Julia and Julia packages (Project.toml / REQUIRE)"
    HOST = "julialang-s3.julialang.org and pkg.julialang.org"

    def detect(self) -> bool:
        return any(
            os.path.exists(self.binder_path(name))
            for name in ("Project.toml", "JuliaProject.toml", "REQUIRE")
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


def context_digest(directory: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order; 32 hex digits."""
    digest = hashlib.sha256(BUILDPACK_VERSION.encode() + b"\0")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _same_version(version: str, available: str) -> bool:
    """runtime.txt's python-3 or python-3.11(.x) is Python 3.11; r-4 or r-4.2 is R 4.2.2."""
    wanted = version.split(".")
    have = available.split(".")
    return wanted[: len(have)] == have[: len(wanted)]


def _directives(scripts: list[tuple[str, str]], prefix: str, start: str = "root") -> list[str]:
    """Dockerfile lines for (user, script) pairs: USER when it changes, RUN ``prefix`` (the
    mounts); the user is ``start`` before and after them."""
    directives = []
    current_user = start
    for user, script in [*scripts, (start, "")]:
        if user != current_user:
            directives.append(f"USER {user}")
            current_user = user
        if script:
            directives.append(f"{prefix} {textwrap.dedent(script.strip(chr(10)))}")
    return directives
