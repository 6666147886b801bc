"""Which Python a repository's environment is built on.

In: the version a repository asks for (runtime.txt's ``python-X.Y``, environment.yml's
``python=X.Y``) or accepts (pyproject.toml's ``requires-python``), and the builder's Pythons: a
base image per version, the default for repositories that ask for none, and what to do when the
one asked for is not there (``nearest``: the closest version, with a warning; ``refuse``).
Out: the version and its base image, and the warning when it is not the version asked for; or
``PythonUnavailable`` naming the versions there are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from packaging.specifiers import SpecifierSet

Fallback = Literal["nearest", "refuse"]
# What a repository that pins no Python gets: Debian bookworm's, the suite Bindery runs on.
DEFAULT_PYTHON = "3.11"

_VERSION = re.compile(r"(?P<major>[0-9]+)(\.(?P<minor>[0-9]+))?(\.[0-9]+)?")


class PythonUnavailable(Exception):
    """The repository asks for a Python this builder cannot give it; the message says which
    ones it can."""


@dataclass(frozen=True)
class Choice:
    version: str
    image: str
    warning: str = ""


@dataclass(frozen=True)
class Pythons:
    images: tuple[tuple[str, str], ...]
    """(version, base image) for every Python this builder has, e.g. ("3.11", "localhost/...")."""
    default: str
    fallback: Fallback = "nearest"

    def __post_init__(self) -> None:
        if self.default not in dict(self.images):
            raise ValueError(f"the default Python {self.default} has no base image")

    def available(self) -> str:
        return ", ".join(sorted(dict(self.images), key=_key))

    def choose(self, asked: str | None, where: str, accepts: SpecifierSet | None = None) -> Choice:
        """The Python for a repository that asks for ``asked`` (None: no pin) in ``where`` (the
        file, for messages), and whose ``accepts`` (requires-python) any choice must satisfy."""
        images = dict(self.images)
        if asked is None:
            candidates = [self.default] if accepts is None else _accepted(images, accepts)
            if self.default in candidates:
                return Choice(self.default, images[self.default])
            if not candidates:
                raise PythonUnavailable(
                    f"{where} requires Python {accepts}, but this Bindery has Python "
                    f"{self.available()} only."
                )
            version = max(candidates, key=_key)
            return Choice(version, images[version])
        match = _VERSION.fullmatch(asked.strip())
        if match is None:
            raise PythonUnavailable(f"{where} asks for Python {asked!r}, which is no version.")
        major = match["major"]
        wanted = f"{major}.{match['minor']}" if match["minor"] else None
        if wanted is None:
            # "python-3": any 3.x, so the default when it is one.
            same_major = [v for v in images if v.split(".")[0] == major]
            if self.default in same_major:
                return Choice(self.default, images[self.default])
            wanted = f"{major}.0"
        elif wanted in images:
            return Choice(wanted, images[wanted])
        same_major = [v for v in images if v.split(".")[0] == major]
        if self.fallback == "refuse" or not same_major:
            raise PythonUnavailable(
                f"{where} asks for Python {asked}, which this Bindery does not have "
                f"(available: {self.available()}). Change {where} to one of those."
            )
        # The closest minor version; between two as close, the newer.
        version = min(same_major, key=lambda v: (abs(_key(v)[1] - _key(wanted)[1]), -_key(v)[1]))
        return Choice(
            version,
            images[version],
            f"Warning: {where} asks for Python {asked}, which this Bindery does not have "
            f"(available: {self.available()}): using Python {version}, the nearest. Code "
            f"that needs exactly {asked} may fail.",
        )


def _key(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor or 0)


def _accepted(images: dict[str, str], accepts: SpecifierSet) -> list[str]:
    # A specifier such as ">=3.10" is about releases: the base image's x.y.z is some x.y release.
    return [v for v in images if accepts.contains(f"{v}.0") or accepts.contains(f"{v}.99")]
