"""The names of the base images repository images are built FROM, one per Python version.

In: the files of the base images' build context (``context/`` beside this module), among them
``pythons``, which lists the Python versions and where each comes from: a Debian suite, or
``uv`` (installed from a python-build-standalone mirror).
Out: ``localhost/bindery-base:<tag>-py<version>``, where <tag> is the hash scripts/base-image.sh
computes over the same bytes, so the services name the images that script built without running
it.
"""

import hashlib
from pathlib import Path

CONTEXT_DIR = Path(__file__).resolve().with_name("context")
REPOSITORY = "localhost/bindery-base"
TAG_LENGTH = 12


def base_image_tag(context_dir: Path = CONTEXT_DIR) -> str:
    """Hash the build context exactly as the shell script does.

    The script runs ``find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum``:
    one ``<sha256>  ./<path>`` line per file, paths in byte order, and the sha256 of those lines.
    """
    paths = sorted(
        ("./" + path.relative_to(context_dir).as_posix()).encode()
        for path in context_dir.rglob("*")
        if path.is_file()
    )
    listing = hashlib.sha256()
    for relative in paths:
        digest = hashlib.sha256((context_dir / relative.decode()).read_bytes()).hexdigest()
        listing.update(f"{digest}  ".encode() + relative + b"\n")
    return listing.hexdigest()[:TAG_LENGTH]


UV = "uv"
"""The source of the Pythons no Debian suite has."""


def python_sources(context_dir: Path = CONTEXT_DIR) -> dict[str, str]:
    """Python version -> the Debian suite its base image is built from, or ``UV``."""
    sources = {}
    for line in (context_dir / "pythons").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            version, source = line.split()
            sources[version] = source
    return sources


def debian_pythons(context_dir: Path = CONTEXT_DIR) -> list[str]:
    """The versions a Debian suite has: built without any mirror."""
    return [v for v, source in python_sources(context_dir).items() if source != UV]


def base_image_name(python: str, context_dir: Path = CONTEXT_DIR) -> str:
    """The full local name of the base image of Python ``python`` built from ``context_dir``."""
    return f"{REPOSITORY}:{base_image_tag(context_dir)}-py{python}"


def base_images(
    versions: list[str], context_dir: Path = CONTEXT_DIR
) -> tuple[tuple[str, str], ...]:
    """(version, base image name) for each of ``versions``: what ``Pythons`` takes."""
    return tuple((version, base_image_name(version, context_dir)) for version in versions)
