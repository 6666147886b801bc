"""Bindery's buildpack: a repository's Python environment on top of the shared base image.

In: the checked-out repository (repo2docker calls us with it as the working directory).
Out: a Dockerfile (``render``) that repo2docker's ``BuildPack.build`` tars up with the repository.

repo2docker's own template cannot run here: it apt-installs locales and base packages on every
base image and its Python buildpacks download micromamba and conda packages, whose hosts are
unreachable. The base image (``bindery.builder.baseimage``) already holds Debian's Python, a venv
with Jupyter at /srv/venv and the user jovyan, so this template only adds what the repository asks
for, with repo2docker's conventions: files in binder/ or .binder/ win over the root, apt.txt,
requirements.txt, postBuild and start. Environment layers come before the repository's files, so a
change to a notebook rebuilds nothing but the last layers.
"""

import os
import textwrap
from functools import lru_cache

import jinja2
from repo2docker.buildpacks.base import BaseImage
from repo2docker.utils import is_local_pip_requirement, open_guess_encoding

# Every script step gets the build's CA bundle (a secret: never in a layer; skipped silently when
# the build has none) and uv's download cache (a cache mount: shared by all builds on this host,
# never in an image). build-ca.sh exports the CA variables only when the secret is there.
RUN_PREFIX = (
    "RUN --mount=type=secret,id=pipca,target=/run/secrets/pipca,mode=0444"
    " --mount=type=cache,target=/home/jovyan/.cache/uv,uid=1000,gid=1000"
    " . /usr/local/lib/bindery/build-ca.sh &&"
)


def _quoted(value: object) -> str:
    """A Dockerfile double-quoted string: labels carry the repository URL, a stranger's text."""
    text = " ".join(str(value).splitlines())
    # Backslash first, then what it escapes: quotes end the string, $ expands variables.
    for special in ("\\", '"', "$"):
        text = text.replace(special, "\\" + special)
    return f'"{text}"'


_JINJA = jinja2.Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True)  # noqa: S701 -- renders a Dockerfile, not HTML
_JINJA.filters["quoted"] = _quoted
TEMPLATE = _JINJA.from_string(
    r"""FROM {{ base_image }}

# Start-up as repo2docker images do: a login shell's environment, then the repository's start
# script if it has one. tini reaps the processes kernels and terminals leave behind.
USER root
ENV PYTHONUNBUFFERED=1
COPY --chmod=0755 /python3-login /usr/local/bin/python3-login
COPY --chmod=0755 /repo2docker-entrypoint /usr/local/bin/repo2docker-entrypoint
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/repo2docker-entrypoint"]
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]

ARG NB_USER
ARG NB_UID
ARG REPO_DIR=/home/${NB_USER}
ENV REPO_DIR=${REPO_DIR}
WORKDIR ${REPO_DIR}
{% for name, value in build_env %}
ENV {{ name }}={{ value }}
{% endfor %}

# The environment: what depends on the repository's environment files only.
{% for src, dst in preassemble_files|dictsort %}
COPY --chown={{ uid }}:{{ uid }} src/{{ src }} ${REPO_DIR}/{{ dst }}
{% endfor %}
{% for directive in preassemble %}
{{ directive }}
{% endfor %}

# The repository.
USER root
COPY --chown={{ uid }}:{{ uid }} src/ ${REPO_DIR}/
{% for directive in assemble %}
{{ directive }}
{% endfor %}
{% for name, value in env %}
ENV {{ name }}={{ value }}
{% endfor %}
{% for name, value in labels|dictsort %}
LABEL {{ name }}={{ value|quoted }}
{% endfor %}
USER ${NB_USER}
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


class BinderyPythonBuildPack(BaseImage):  # type: ignore[misc]
    """requirements.txt into the base image's venv with uv; apt.txt, postBuild and start as
    repo2docker's BaseImage handles them."""

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
        return scripts

    def render(self, build_args: dict[str, str] | None = None) -> str:
        """The Dockerfile for this repository."""
        build_args = build_args or {}
        return TEMPLATE.render(
            base_image=self.base_image,
            build_env=self.get_build_env(),
            env=self.get_env(),
            preassemble_files=self.get_preassemble_script_files(),
            preassemble=_directives(self.get_preassemble_scripts()),
            assemble=_directives(self.get_assemble_scripts()),
            labels=self.get_labels(),
            post_build_scripts=self.get_post_build_scripts(),
            start_script=self.get_start_script(),
            appendix=self.appendix,
            run_prefix=RUN_PREFIX,
            # COPY --chown needs a number: the build arg is not expanded there.
            uid=build_args.get("NB_UID", "1000"),
        )

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


def _directives(scripts: list[tuple[str, str]]) -> list[str]:
    """Dockerfile lines for (user, script) pairs: USER when it changes, RUN with the mounts."""
    directives = []
    current_user = "root"
    for user, script in scripts:
        if user != current_user:
            directives.append(f"USER {user}")
            current_user = user
        directives.append(f"{RUN_PREFIX} {textwrap.dedent(script.strip(chr(10)))}")
    return directives
