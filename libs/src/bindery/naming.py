"""Names derived from repository URLs: image repositories and session names.

Both must be valid OCI repository components / DNS-ish labels, readable by a person who sees
them in `podman ps`, and unique per repository (a short hash of the full URL disambiguates).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

_INVALID = re.compile(r"[^a-z0-9]+")


def repo_slug(repo_url: str, max_length: int = 40) -> str:
    """`https://github.com/Owner/My_Repo.git` -> `owner-my-repo-<8 hex>`."""
    path = urlsplit(repo_url).path if "://" in repo_url else repo_url
    parts = [p for p in path.removesuffix(".git").split("/") if p][-2:]
    readable = _INVALID.sub("-", "-".join(parts).lower()).strip("-")[:max_length].strip("-")
    digest = hashlib.sha256(repo_url.encode()).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else digest


def session_name(repo_url: str, launch_id: str) -> str:
    """Deterministic per launch, so a redelivered launch finds its container instead of a twin."""
    return f"{repo_slug(repo_url, 24)}-{launch_id[:10].lower()}"


def repo_key(repo_url: str) -> str:
    """One key per repository however its URL is spelled: quotas and sticky builds count by it."""
    return repo_url.lower().removesuffix("/").removesuffix(".git")
