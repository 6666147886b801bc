"""Parse and check BinderHub launch specs before anything touches a subprocess or the network.

In: provider name and the raw (percent-encoded) spec from `/build/<provider>/<spec>`.
Out: a `RepoRef` (repository URL and unresolved ref), or `BadSpec` with a reason a person can
act on. Refs and URLs come from strangers: nothing here may be read as a git option
(GHSA-9jjr-qqfp-ppwx) or walk out of a path (GHSA-q276-fxp7-xhx3).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bindery.events import FailureReason
from bindery.settings import Profile

ALLOWED_SCHEMES = frozenset({"http", "https", "git", "ssh"})
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_GH_PART = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class BadSpec(ValueError):
    def __init__(self, message: str, reason: FailureReason = FailureReason.INVALID_SPEC) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RepoRef:
    repo_url: str
    ref: str


def check_ref(ref: str, max_length: int = 255) -> str:
    if not ref:
        raise BadSpec("No ref given: add a branch, tag or commit after the repository, e.g. /HEAD")
    if len(ref) > max_length:
        raise BadSpec(f"The ref is longer than {max_length} characters")
    if ref.startswith("-"):
        raise BadSpec(f"Invalid ref {ref!r}: a ref cannot start with '-'")
    if _CONTROL_OR_SPACE.search(ref):
        raise BadSpec("Invalid ref: it contains whitespace or control characters")
    if ".." in ref or ref.startswith("/") or ref.endswith("/") or "\\" in ref:
        raise BadSpec(
            f"Invalid ref {ref!r}: '..', backslashes and leading or trailing '/' are not allowed"
        )
    if any(c in ref for c in "~^:?*[") or ref.endswith(".lock") or "@{" in ref:
        raise BadSpec(f"Invalid ref {ref!r}: not a valid git branch, tag or commit name")
    return ref


def parse_spec(provider: str, raw_spec: str, profile: Profile, max_length: int = 4096) -> RepoRef:
    if len(raw_spec) > max_length:
        raise BadSpec(f"The link is longer than {max_length} characters")
    if provider == "git":
        url_part, sep, ref_part = raw_spec.partition("/")
        if not sep:
            raise BadSpec("A git spec is '<url-escaped repository URL>/<ref>'; the ref is missing")
        return RepoRef(check_repo_url(unquote(url_part), profile), check_ref(unquote(ref_part)))
    if provider == "gh":
        parts = raw_spec.split("/", 2)
        if len(parts) != 3 or not all(_GH_PART.match(unquote(p)) for p in parts[:2]):
            raise BadSpec("A GitHub spec is '<owner>/<repository>/<ref>'")
        owner, repo, ref = (unquote(p) for p in parts)
        if owner in {".", ".."} or repo in {".", ".."}:
            raise BadSpec("A GitHub owner or repository cannot be '.' or '..'")
        return RepoRef(f"https://github.com/{owner}/{repo.removesuffix('.git')}", check_ref(ref))
    raise BadSpec(f"Unknown repository provider {provider!r}; supported: git, gh")


def check_repo_url(url: str, profile: Profile) -> str:
    if not url or _CONTROL_OR_SPACE.search(url):
        raise BadSpec("The repository URL is empty or contains whitespace or control characters")
    if url.startswith("-"):
        raise BadSpec("The repository URL cannot start with '-'")
    if profile is Profile.LOCAL and url.startswith("/"):
        if not Path(url).is_dir():
            raise BadSpec(f"No repository at local path {url}", FailureReason.REPO_UNREACHABLE)
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if profile is not Profile.LOCAL:
            raise BadSpec("file:// repositories are only accepted by a local Bindery")
        return url
    if scheme not in ALLOWED_SCHEMES:
        raise BadSpec(
            f"Repository URL scheme {scheme or '(none)'!r} is not allowed: "
            "use https, http, git or ssh"
        )
    if not parts.hostname:
        raise BadSpec("The repository URL has no host")
    check_host(parts.hostname, profile)
    return url


def check_host(host: str, profile: Profile) -> None:
    """Refuse hosts that resolve to internal addresses (SSRF); the local profile allows loopback."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadSpec(f"Cannot resolve host {host!r}", FailureReason.REPO_UNREACHABLE) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_loopback and profile is Profile.LOCAL:
            continue
        if not address.is_global:
            raise BadSpec(f"Repositories on {host} ({address}) are not allowed: internal address")
