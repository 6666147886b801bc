"""What every Bindery buildpack shares: the two-stage build (environment image, then the
repository on top), the Dockerfile templates, the build steps' run prefixes, and what the host
hands the packs.

In: ``BuildContext`` (the builder's settings, through repo2docker's ``extra_build_kwargs``), the
checked-out repository as the working directory, and a pack's hooks (``configure``, ``check``,
``generated_files``, ``overlays``, ``stage``, ``volumes``, ``notes`` and repo2docker's
``get_*`` scripts). Out: ``BinderyBuildPack.build``'s log lines and two ``podman build`` runs
through the engine -- the environment image ``<env repository>:<key>`` (``context_digest`` of
its build context), skipped when it exists locally or in the registry, then the requested image
``FROM`` it. ``UnsupportedRepository`` refuses a repository before any work; ``BuildWarning``
marks a log line the person launching must see.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from packaging.specifiers import SpecifierSet
from repo2docker.buildpacks.base import HERE as REPO2DOCKER_FILES
from repo2docker.buildpacks.base import BaseImage

from bindery.builder import conda
from bindery.builder.pythons import DEFAULT_PYTHON, Choice, Pythons, PythonUnavailable

# Part of every environment key: bump it when a change to a pack (any module of this package)
# changes what an environment holds.
BUILDPACK_VERSION = "2"
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
    conda_default_channels: tuple[str, ...] = conda.DEFAULT_CHANNELS
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
# uv compiles what it installs, as pip does on repo2docker's route: a session imports compiled
# packages (numpy, pandas, scipy, matplotlib and scikit-learn: 1.2 s, against 3.6 s that every
# session would pay again, each in its own container).
export UV_COMPILE_BYTECODE=1
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

# Every instruction is a step that costs its own cache lookup or commit (about 0.1 s), hence
# as few as the image needs.
# Start-up as repo2docker images do: a login shell's environment, then the repository's start
# script if it has one. tini reaps the processes kernels and terminals leave behind.
# repo2docker's PATH: what postBuild or the session installs with `pip install --user`, and a
# repository's own .local/bin, come first; again in login shells, whose PATH Debian resets.
# (One ENV sees the variables set before it only: REPO_DIR is spelled out in PATH.)
USER root
ENV PYTHONUNBUFFERED=1 NB_USER={{ user }} NB_UID={{ uid }} REPO_DIR={{ repo_dir }} \
    PATH=${HOME}/.local/bin:{{ repo_dir }}/.local/bin:${PATH}
COPY --chmod=0755 python3-login repo2docker-entrypoint /usr/local/bin/
COPY --chmod=0644 build-env.sh {{ build_env_path }}
COPY --chmod=0644 session-path.sh /etc/profile.d/repo2docker-path.sh
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/repo2docker-entrypoint"]
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
WORKDIR ${REPO_DIR}
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
            # Ends as the user, the environment image's user.
            preassemble=_directives(
                self.get_preassemble_scripts(),
                prefix=run_prefix(ENV_CACHE_ID),
                end="${NB_USER}",
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


def missing_host(what: str, host: str) -> str:
    return (
        f"This repository needs {what}, which come from {host}. This Bindery cannot reach "
        f"{host} and has no mirror of it configured, so it cannot build this repository."
    )


def context_digest(directory: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order; 32 hex digits."""
    digest = hashlib.sha256(BUILDPACK_VERSION.encode() + b"\0")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _directives(
    scripts: list[tuple[str, str]], prefix: str, start: str = "root", end: str = ""
) -> list[str]:
    """Dockerfile lines for (user, script) pairs: USER when it changes, RUN ``prefix`` (the
    mounts); the user is ``start`` before them and ``end`` (default: ``start``) after."""
    directives = []
    current_user = start
    for user, script in [*scripts, (end or start, "")]:
        if user != current_user:
            directives.append(f"USER {user}")
            current_user = user
        if script:
            directives.append(f"{prefix} {textwrap.dedent(script.strip(chr(10)))}")
    return directives
