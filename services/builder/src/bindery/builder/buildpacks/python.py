"""requirements.txt, setup.py and pyproject.toml: repo2docker's Python pack, installed with uv
into the base image's venv; and the base of the packs that turn their files into one
requirements list.

In: the repository's requirements.txt / setup.py / pyproject.toml / runtime.txt ``python-``
(as the working directory). Out: the install steps ``BinderyBuildPack`` renders -- in the
environment image when the requirements name no file of the repository, else with the
repository -- and the Python the repository asks for (``python_asked``).
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from repo2docker.utils import is_local_pip_requirement, open_guess_encoding

from bindery.builder.buildpacks.base import GENERATED_DIR, BinderyBuildPack, UnsupportedRepository


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


class RequirementsListBuildPack(BinderyBuildPack):
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
