"""Parse and check BinderHub launch specs before anything touches a subprocess or the network.

In: provider name and the raw (percent-encoded) spec from `/build/<provider>/<spec>`.
Out: a target naming what to look up (one dataclass per kind of provider), or `ResolveError`
with a reason a person can act on. Refs and URLs come from strangers: nothing here may be read
as a git option (GHSA-9jjr-qqfp-ppwx) or walk out of an API path (GHSA-q276-fxp7-xhx3); every
component that later goes into a URL is checked here and quoted where the URL is built.
Host checks that need DNS (SSRF) happen in `hosts`, asynchronously.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from bindery.events import MAX_SPEC_LENGTH, FailureReason
from bindery.providers import PROVIDERS
from bindery.resolver.errors import ResolveError
from bindery.settings import Profile

ALLOWED_SCHEMES = frozenset({"http", "https", "git", "ssh"})
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,64}$")
_GIT_SSH = re.compile(r"^([\w-]+@[\w.-]+):(?!//)(.+)$")
_DOI = re.compile(r"^10\.[0-9]{4,9}/[^\s]{1,200}$")
_DOI_PREFIX = re.compile(r"^(doi:|https?://(dx\.)?doi\.org/)", re.IGNORECASE)
_HYDROSHARE_ID = re.compile(r"([0-9a-f]{32})")
_SWHID = re.compile(r"^swh:1:(dir|rev):([0-9a-f]{40})(;[^\s]*)?$")
_CKAN_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_DEFAULT_REF = "HEAD"


@dataclass(frozen=True)
class GitTarget:
    repo_url: str
    ref: str


@dataclass(frozen=True)
class GitHubTarget:
    owner: str
    repo: str
    ref: str


@dataclass(frozen=True)
class GistTarget:
    user: str
    gist_id: str
    ref: str


@dataclass(frozen=True)
class GitLabTarget:
    namespace: str
    ref: str


@dataclass(frozen=True)
class DoiTarget:
    provider: str
    doi: str


@dataclass(frozen=True)
class HydroshareTarget:
    resource_id: str


@dataclass(frozen=True)
class CkanTarget:
    url: str
    api_base: str
    dataset_id: str
    activity_id: str | None
    host: str


@dataclass(frozen=True)
class SwhidTarget:
    kind: str
    hash: str


Target = (
    GitTarget
    | GitHubTarget
    | GistTarget
    | GitLabTarget
    | DoiTarget
    | HydroshareTarget
    | CkanTarget
    | SwhidTarget
)


def check_ref(ref: str, max_length: int = 255) -> str:
    if not ref:
        raise ResolveError(
            "No ref given: add a branch, tag or commit after the repository, e.g. /HEAD"
        )
    if len(ref) > max_length:
        raise ResolveError(f"The ref is longer than {max_length} characters")
    if ref.startswith("-"):
        raise ResolveError(f"Invalid ref {ref[:80]!r}: a ref cannot start with '-'")
    if _CONTROL_OR_SPACE.search(ref):
        raise ResolveError("Invalid ref: it contains whitespace or control characters")
    if ".." in ref or ref.startswith("/") or ref.endswith("/") or "\\" in ref or "//" in ref:
        raise ResolveError(
            f"Invalid ref {ref[:80]!r}: '..', backslashes and empty or leading or trailing '/' "
            "are not allowed"
        )
    if any(c in ref for c in "~^:?*[%#") or ref.endswith((".lock", ".")) or "@{" in ref:
        raise ResolveError(f"Invalid ref {ref[:80]!r}: not a valid git branch, tag or commit name")
    return ref


def _decode(part: str) -> str:
    try:
        return unquote(part, errors="strict")
    except UnicodeDecodeError as exc:
        raise ResolveError("The link is not valid UTF-8 once percent-decoded") from exc


def parse_spec(
    provider: str,
    raw_spec: str,
    profile: Profile,
    max_ref_length: int = 255,
) -> Target:
    if len(raw_spec) > MAX_SPEC_LENGTH:
        raise ResolveError(f"The link is longer than {MAX_SPEC_LENGTH} characters")
    if provider not in PROVIDERS:
        raise ResolveError(
            f"Unknown repository provider {provider[:32]!r}; supported: "
            + ", ".join(sorted(PROVIDERS))
        )
    if _CONTROL_OR_SPACE.search(raw_spec):
        raise ResolveError("The link contains whitespace or control characters")
    raw_spec = raw_spec.rstrip("/")
    match provider:
        case "git":
            return _parse_git(raw_spec, profile, max_ref_length)
        case "gh":
            return _parse_github(raw_spec, max_ref_length)
        case "gist":
            return _parse_gist(raw_spec)
        case "gl":
            return _parse_gitlab(raw_spec, max_ref_length)
        case "zenodo" | "figshare" | "dataverse":
            return DoiTarget(provider, parse_doi(_decode(raw_spec)))
        case "hydroshare":
            return _parse_hydroshare(_decode(raw_spec))
        case "ckan":
            return _parse_ckan(_decode(raw_spec))
        case _:
            return _parse_swhid(_decode(raw_spec))


def _split_ref(raw_spec: str, max_ref_length: int) -> tuple[str, str]:
    """`<first part>/<ref>`; a missing ref means the default branch (HEAD), as on BinderHub."""
    head, sep, ref_part = raw_spec.partition("/")
    ref = _decode(ref_part) if sep and ref_part else _DEFAULT_REF
    return _decode(head), check_ref(ref, max_ref_length)


def _parse_git(raw_spec: str, profile: Profile, max_ref_length: int) -> GitTarget:
    url, ref = _split_ref(raw_spec, max_ref_length)
    return GitTarget(check_repo_url(url, profile), ref)


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value) or value in {".", ".."} or value.startswith("-"):
        raise ResolveError(
            f"Invalid {what} {value[:80]!r}: use letters, digits, '-', '_' and '.' only"
        )
    return value


def _parse_github(raw_spec: str, max_ref_length: int) -> GitHubTarget:
    parts = raw_spec.split("/", 2)
    if len(parts) < 2:
        raise ResolveError("A GitHub spec is '<owner>/<repository>/<ref>'")
    owner = _check_name(_decode(parts[0]), "GitHub owner")
    repo = _check_name(_decode(parts[1]).removesuffix(".git"), "GitHub repository")
    ref = _decode(parts[2]) if len(parts) == 3 and parts[2] else _DEFAULT_REF
    return GitHubTarget(owner, repo, check_ref(ref, max_ref_length))


def _parse_gist(raw_spec: str) -> GistTarget:
    parts = [_decode(p) for p in raw_spec.split("/")]
    if len(parts) not in (2, 3):
        raise ResolveError("A gist spec is '<user>/<gist id>[/<commit>]'")
    user = _check_name(parts[0], "GitHub user")
    if not _HEX.match(parts[1]):
        raise ResolveError(f"Invalid gist id {parts[1][:80]!r}: a gist id is hexadecimal")
    ref = parts[2] if len(parts) == 3 else _DEFAULT_REF
    if ref not in {"HEAD", "master", "main"} and not _SHA.match(ref):
        raise ResolveError(
            f"Invalid gist revision {ref[:80]!r}: use HEAD or a full 40-character commit"
        )
    return GistTarget(user, parts[1].lower(), ref)


def _parse_gitlab(raw_spec: str, max_ref_length: int) -> GitLabTarget:
    namespace, ref = _split_ref(raw_spec, max_ref_length)
    segments = namespace.removesuffix(".git").split("/")
    if len(segments) < 2:
        raise ResolveError(
            "A GitLab spec is '<url-escaped group/project>/<ref>', e.g. group%2Fproject/HEAD"
        )
    for segment in segments:
        _check_name(segment, "GitLab group or project")
    return GitLabTarget("/".join(segments), ref)


def parse_doi(value: str) -> str:
    doi = _DOI_PREFIX.sub("", value.strip())
    if not _DOI.match(doi):
        raise ResolveError(f"{value[:80]!r} is not a DOI: a DOI looks like 10.5281/zenodo.3242074")
    if any(segment in {".", ".."} for segment in doi.split("/")):
        raise ResolveError("Invalid DOI: '.' and '..' are not allowed as path segments")
    return doi


def _parse_hydroshare(spec: str) -> HydroshareTarget:
    found = _HYDROSHARE_ID.findall(spec)
    if len(found) != 1:
        raise ResolveError(
            "A Hydroshare spec is a resource id (32 hexadecimal characters) or its URL"
        )
    return HydroshareTarget(found[0])


def _parse_ckan(url: str) -> CkanTarget:
    if url.startswith("-"):
        raise ResolveError("The dataset URL cannot start with '-'")
    parts = urlsplit(url)
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ResolveError(
            "A CKAN spec is the url-escaped dataset URL, https://<host>/dataset/<id>"
        )
    if parts.username or parts.password:
        raise ResolveError("The dataset URL cannot carry a user name or password")
    prefix, sep, rest = parts.path.partition("/dataset/")
    if not sep or ".." in parts.path or "//" in prefix:
        raise ResolveError("A CKAN dataset URL contains /dataset/<id>")
    pieces = rest.split("/")
    dataset_id = pieces[0]
    if not _CKAN_ID.match(dataset_id):
        raise ResolveError(f"Invalid CKAN dataset id {dataset_id[:80]!r}")
    activity: str | None = None
    if "history" in pieces[1:]:
        index = pieces.index("history", 1)
        activity = pieces[index + 1] if index + 1 < len(pieces) else ""
    elif "activity_id" in parse_qs(parts.query):
        activity = parse_qs(parts.query)["activity_id"][0]
    if activity is not None and not _CKAN_ID.match(activity):
        raise ResolveError(f"Invalid CKAN activity id {activity[:80]!r}")
    port = f":{parts.port}" if parts.port else ""
    host = parts.hostname
    netloc = f"[{host}]{port}" if ":" in host else f"{host}{port}"
    base = f"{parts.scheme.lower()}://{netloc}{prefix}"
    canonical = f"{base}/dataset/{dataset_id}" + (f"/history/{activity}" if activity else "")
    return CkanTarget(canonical, f"{base}/api/3/action", dataset_id, activity, host)


def _parse_swhid(spec: str) -> SwhidTarget:
    match = _SWHID.match(spec)
    if match is None:
        raise ResolveError(
            "A Software Heritage spec is swh:1:dir:<40 hex> or swh:1:rev:<40 hex> "
            "(other object types cannot be launched)"
        )
    return SwhidTarget(match.group(1), match.group(2))


def check_repo_url(url: str, profile: Profile) -> str:
    """Scheme allow-list and shape; the host's addresses are checked later (async DNS)."""
    if not url or _CONTROL_OR_SPACE.search(url):
        raise ResolveError(
            "The repository URL is empty or contains whitespace or control characters"
        )
    if url.startswith("-"):
        raise ResolveError("The repository URL cannot start with '-'")
    if profile is Profile.LOCAL and url.startswith("/"):
        if ".." in url.split("/") or not Path(url).is_dir():
            raise ResolveError(f"No repository at local path {url}", FailureReason.REPO_UNREACHABLE)
        return url
    ssh = _GIT_SSH.match(url)
    if ssh:
        # git@host:owner/repo, the scp-like form, is ssh (BinderHub maps it the same way).
        url = f"ssh://{ssh.group(1)}/{ssh.group(2)}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if profile is not Profile.LOCAL:
            raise ResolveError("file:// repositories are only accepted by a local Bindery")
        return url
    if scheme not in ALLOWED_SCHEMES:
        raise ResolveError(
            f"Repository URL scheme {scheme[:20] or '(none)'!r} is not allowed: "
            "use https, http, git or ssh"
        )
    if not parts.hostname or parts.hostname.startswith("-"):
        raise ResolveError("The repository URL has no valid host")
    if (parts.username or "").startswith("-"):
        raise ResolveError("The repository URL's user name cannot start with '-'")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ResolveError("The repository URL has an invalid port") from exc
    return url
