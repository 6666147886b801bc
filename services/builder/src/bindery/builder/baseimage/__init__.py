"""The name of the shared base image every repository image is built FROM.

In: the files of the base image's build context (``context/`` beside this module).
Out: ``localhost/bindery-base:<tag>``, where <tag> is the hash scripts/base-image.sh computes
over the same bytes, so the services name the image that script built without running it.
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


def base_image_name(context_dir: Path = CONTEXT_DIR) -> str:
    """The full local name of the base image built from ``context_dir``."""
    return f"{REPOSITORY}:{base_image_tag(context_dir)}"
