"""Checks of the mirror settings operators give the builder (CRAN mirror, Nix channel and caches).

In: a setting's value, which ends up in build steps' command lines, R or Nix configuration in
images, or ``podman build --volume``. Out: the value normalised, or ValueError saying what is
wrong with it, before the builder starts.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

# A directory goes into `podman build --volume SRC:DST:ro`: no colon or comma there.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
# What a URL may hold to be written into a build step or an R string: no quotes, backslashes,
# spaces or newlines.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]+")


def checked_directory(value: str, what: str) -> str:
    if not SAFE_PATH.fullmatch(value):
        raise ValueError(f"{what} {value!r}: only letters, digits and ._/+@- are accepted")
    return os.path.normpath(value)


def checked_url(
    value: str, what: str, schemes: tuple[str, ...], *, or_directory: bool = False
) -> str:
    """``value`` as a URL of one of ``schemes``; ``or_directory`` says the setting could also
    have been an absolute directory (for the message)."""
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "file"):
        alternative = " nor an absolute directory" if or_directory else ""
        raise ValueError(f"{what} {value!r} is not an {'/'.join(schemes)} URL{alternative}")
    if parts.username or parts.password:
        # The URL stays in the image: in build steps' history or as the session's configuration.
        raise ValueError(f"{what} URL: credentials would be kept in every image; drop them")
    if not _URL_CHARS.fullmatch(value):
        raise ValueError(f"{what} URL {value!r} holds characters a build step cannot quote")
    return value.rstrip("/")


def checked_url_or_directory(value: str, what: str) -> str:
    """A mirror setting that is an http(s) URL or an absolute directory, normalised; empty for
    none. ValueError names ``what`` (e.g. "CRAN mirror")."""
    value = value.strip()
    if not value:
        return ""
    if value.startswith("/"):
        return checked_directory(value, f"{what} directory")
    return checked_url(value, what, ("http", "https"), or_directory=True)
