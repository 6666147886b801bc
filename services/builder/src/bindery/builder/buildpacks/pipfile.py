"""Pipfile and Pipfile.lock: repo2docker's Pipfile pack, without pipenv.

In: the repository's Pipfile.lock (or Pipfile without one). Out: one requirements list of its
default and dev packages (``pipfile-requirements.txt``, generated, installed with uv in the
environment image) and install steps with the repository for local paths.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from functools import lru_cache

from bindery.builder.buildpacks.base import BuildContext, UnsupportedRepository
from bindery.builder.buildpacks.python import RequirementsListBuildPack


class PipfileBuildPack(RequirementsListBuildPack):
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
