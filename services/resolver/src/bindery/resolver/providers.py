"""Each provider's lookup: a parsed target -> the immutable version it names right now.

In: a target from `spec.parse_spec`. Out: a `Resolution` (the URL repo2docker's content provider
accepts, the ref asked for, the resolved commit or record version), or `ResolveError`.
API URLs are built only from components `spec` checked, each percent-quoted here; hosts a
stranger chose (git URLs, CKAN sites) pass the SSRF policy first, and DOIs may only lead to the
hosts configured for their provider. The API calls and answers are those BinderHub's
repoproviders use:
- gh:   GET {api}/repos/{owner}/{repo}/commits/{ref} -> {"sha"}; 404/422 unknown ref (ETag)
- gist: GET {api}/gists/{id} -> {"public", "history": [{"version"}]}
- gl:   GET {gitlab}/api/v4/projects/{ns}/repository/commits/{ref} -> {"id"} (ETag)
- zenodo, figshare, dataverse: the DOI resolver's redirect to the landing page, then
  {zenodo}/api/records/{id} -> {"id"}; {figshare api}/articles/{id}/versions -> [{"version"}];
  {site}/api/datasets/:persistentId?persistentId=doi:{doi} -> {"status", "data": {"id",
  "latestVersion": {"versionNumber", "versionMinorNumber"}}}
- hydroshare: GET {site}/hsapi/resource/{id}/scimeta/elements -> {"dates": [{"type", "start_date"}]}
- ckan: GET {site}/api/3/action/package_show?id={id} -> {"success", "result": {"metadata_modified"}}
- swhid: GET {swh api}/{revision|directory}/{hash}/ -> 200 or 404
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from bindery.events import FailureReason
from bindery.resolver.api import ApiClient, Reply
from bindery.resolver.errors import ResolveError
from bindery.resolver.git import resolve_commit
from bindery.resolver.hosts import HostPolicy
from bindery.resolver.settings import ResolverSettings
from bindery.resolver.spec import (
    CkanTarget,
    DoiTarget,
    GistTarget,
    GitHubTarget,
    GitLabTarget,
    GitTarget,
    HydroshareTarget,
    SwhidTarget,
    Target,
)
from bindery.settings import Profile

_SHA = re.compile(r"^[0-9a-f]{40}$")
_FIGSHARE_LANDING = re.compile(r"/articles/(?:[^/]+/)*?(\d+)(?:/(\d+))?/?$")
_NOT_FOUND = frozenset({404, 410, 422})
_NOT_PUBLIC = _NOT_FOUND | {401, 403}
"""What APIs answer for something private: to a stranger, the same as missing."""


@dataclass(frozen=True)
class Resolution:
    repo_url: str
    ref: str
    resolved_ref: str
    immutable: bool
    """The spec itself named one version (a full SHA, a DOI with a version): cache forever."""


def _commit(repo_url: str, ref: str, sha: str) -> Resolution:
    """A git commit; a ref that is itself a full SHA can never move."""
    return Resolution(repo_url, ref, sha, bool(_SHA.match(ref)))


def _q(component: str) -> str:
    return quote(component, safe="")


def _need(data: Any, source: str, *path: str | int) -> Any:
    """data[path...] or a clear error when the API answered in an unexpected shape."""
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            raise ResolveError(
                f"{source} answered in an unexpected shape (no {key!r})",
                FailureReason.REPO_UNREACHABLE,
            ) from None
    return data


def _epoch(timestamp: str, source: str) -> str:
    """Providers' modification times (UTC, optional fraction) -> whole seconds since 1970."""
    try:
        parsed = datetime.fromisoformat(timestamp.split(".")[0].removesuffix("Z"))
    except ValueError:
        raise ResolveError(
            f"{source} answered with an unreadable date {timestamp[:40]!r}",
            FailureReason.REPO_UNREACHABLE,
        ) from None
    return str(int(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()))


class Providers:
    def __init__(self, settings: ResolverSettings, api: ApiClient, policy: HostPolicy) -> None:
        self.settings = settings
        self.api = api
        self.policy = policy

    async def resolve(self, target: Target) -> Resolution:
        match target:
            case GitTarget():
                return await self._git(target)
            case GitHubTarget():
                return await self._github(target)
            case GistTarget():
                return await self._gist(target)
            case GitLabTarget():
                return await self._gitlab(target)
            case DoiTarget(provider="zenodo"):
                return await self._zenodo(target.doi)
            case DoiTarget(provider="figshare"):
                return await self._figshare(target.doi)
            case DoiTarget():
                return await self._dataverse(target.doi)
            case HydroshareTarget():
                return await self._hydroshare(target.resource_id)
            case CkanTarget():
                return await self._ckan(target)
            case SwhidTarget():
                return await self._swhid(target)

    async def _git(self, target: GitTarget) -> Resolution:
        host = urlsplit(target.repo_url).hostname
        if host is not None and not (
            self.settings.profile is Profile.LOCAL and target.repo_url.startswith("file:")
        ):
            await self.policy.check_host(host)
        commit = await resolve_commit(
            target.repo_url, target.ref, self.settings.profile, self.settings.git_timeout
        )
        return _commit(target.repo_url, target.ref, commit)

    def _github_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/vnd.github+json"}
        if self.settings.github_token:
            headers["Authorization"] = f"Bearer {self.settings.github_token}"
        return headers

    async def _forge_commit(
        self,
        url: str,
        *,
        source: str,
        headers: dict[str, str],
        missing: frozenset[int],
        not_found: str,
        field: str,
    ) -> str:
        """The commit a forge's commits API names at `url` (its `field`), or REF_NOT_FOUND."""
        reply = await self.api.get(url, source=source, headers=headers, revalidate=True)
        if reply.status in missing:
            raise ResolveError(not_found, FailureReason.REF_NOT_FOUND)
        return self._expect_sha(_need(_ok(reply, source), source, field), source)

    async def _github(self, target: GitHubTarget) -> Resolution:
        name = f"{target.owner}/{target.repo}"
        sha = await self._forge_commit(
            f"{self.settings.github_api_url}/repos/{_q(target.owner)}/{_q(target.repo)}"
            f"/commits/{_q(target.ref)}",
            source="GitHub",
            headers=self._github_headers(),
            missing=_NOT_FOUND | {409},
            not_found=f"Could not find {target.ref!r} in the GitHub repository {name}: no such "
            "branch, tag or commit, or the repository does not exist or is private",
            field="sha",
        )
        # GitHub names are case-insensitive: one spelling, one image.
        return _commit(f"{self.settings.github_url}/{name.lower()}", target.ref, sha)

    async def _gist(self, target: GistTarget) -> Resolution:
        url = f"{self.settings.github_api_url}/gists/{_q(target.gist_id)}"
        reply = await self.api.get(
            url, source="GitHub", headers=self._github_headers(), revalidate=True
        )
        if reply.status in _NOT_FOUND:
            raise ResolveError(f"No gist {target.gist_id} on GitHub", FailureReason.REF_NOT_FOUND)
        data = _ok(reply, "GitHub")
        if not _need(data, "GitHub", "public") and not self.settings.allow_secret_gists:
            raise ResolveError(
                "This gist is secret; this Bindery does not launch secret gists",
                FailureReason.BANNED,
            )
        versions = [_need(entry, "GitHub", "version") for entry in _need(data, "GitHub", "history")]
        if not versions:
            raise ResolveError(
                f"The gist {target.gist_id} has no revisions", FailureReason.REF_NOT_FOUND
            )
        if target.ref in {"HEAD", "master", "main"}:
            resolved = versions[0]
        elif target.ref in versions:
            resolved = target.ref
        else:
            raise ResolveError(
                f"The gist {target.gist_id} has no revision {target.ref}",
                FailureReason.REF_NOT_FOUND,
            )
        return _commit(
            f"{self.settings.gist_url}/{target.user}/{target.gist_id}.git",
            target.ref,
            self._expect_sha(resolved, "GitHub"),
        )

    async def _gitlab(self, target: GitLabTarget) -> Resolution:
        sha = await self._forge_commit(
            f"{self.settings.gitlab_url}/api/v4/projects/{_q(target.namespace)}"
            f"/repository/commits/{_q(target.ref)}",
            source="GitLab",
            headers=(
                {"PRIVATE-TOKEN": self.settings.gitlab_token} if self.settings.gitlab_token else {}
            ),
            missing=_NOT_PUBLIC,
            not_found=f"Could not find {target.ref!r} in the GitLab project {target.namespace}: "
            "no such branch, tag or commit, or the project does not exist or is private",
            field="id",
        )
        return _commit(f"{self.settings.gitlab_url}/{target.namespace}.git", target.ref, sha)

    async def _landing(self, doi: str, source: str, hosts: set[str]) -> str:
        """Where the DOI resolver sends a DOI; it must be one of the provider's hosts."""
        reply = await self.api.get(
            f"{self.settings.doi_resolver_url}/{quote(doi, safe='/')}",
            source="The DOI resolver",
            max_redirects=0,
        )
        landing = reply.location()
        if reply.status in _NOT_FOUND:
            raise ResolveError(f"The DOI {doi} does not exist", FailureReason.REF_NOT_FOUND)
        if landing is None:
            raise ResolveError(
                f"The DOI resolver did not say where {doi} points (it answered {reply.status})",
                FailureReason.REPO_UNREACHABLE,
            )
        parts = urlsplit(landing)
        if parts.netloc.lower() not in hosts or parts.scheme not in {"http", "https"}:
            raise ResolveError(
                f"The DOI {doi} points to {parts.netloc or landing[:80]}, which is not {source}"
            )
        return landing

    async def _zenodo(self, doi: str) -> Resolution:
        base = self.settings.zenodo_url
        landing = await self._landing(doi, "Zenodo", {urlsplit(base).netloc.lower()})
        record = urlsplit(landing).path.rstrip("/").rsplit("/", 1)[-1]
        if not record.isdigit():
            raise ResolveError(f"The DOI {doi} does not point to a Zenodo record")
        # A concept DOI names every version; Zenodo redirects its record to the latest one.
        reply = await self.api.get(f"{base}/api/records/{record}", source="Zenodo")
        if reply.status in _NOT_FOUND:
            raise ResolveError(
                f"Zenodo has no record {record} (DOI {doi})", FailureReason.REF_NOT_FOUND
            )
        record_id = str(_need(_ok(reply, "Zenodo"), "Zenodo", "id"))
        if not record_id.isdigit():
            raise ResolveError(
                "Zenodo answered with an invalid record id", FailureReason.REPO_UNREACHABLE
            )
        return Resolution(f"{base}/records/{record_id}", "", record_id, record_id == record)

    async def _figshare(self, doi: str) -> Resolution:
        base = self.settings.figshare_url
        landing = await self._landing(doi, "Figshare", {urlsplit(base).netloc.lower()})
        match = _FIGSHARE_LANDING.search(urlsplit(landing).path)
        if match is None:
            raise ResolveError(f"The DOI {doi} does not point to a Figshare article")
        article, version = match.group(1), match.group(2)
        reply = await self.api.get(
            f"{self.settings.figshare_api_url}/articles/{article}/versions", source="Figshare"
        )
        if reply.status in _NOT_FOUND:
            raise ResolveError(f"Figshare has no article {article}", FailureReason.REF_NOT_FOUND)
        versions = {str(_need(v, "Figshare", "version")) for v in _ok(reply, "Figshare") or []}
        if not versions:
            raise ResolveError(
                f"Figshare article {article} has no public version", FailureReason.REF_NOT_FOUND
            )
        if version is None:
            version = max(versions, key=int)
        elif version not in versions:
            raise ResolveError(
                f"Figshare article {article} has no version {version}", FailureReason.REF_NOT_FOUND
            )
        return Resolution(
            f"{base}/articles/_/{article}/{version}",
            "",
            f"{article}.v{version}",
            match.group(2) is not None,
        )

    async def _dataverse(self, doi: str) -> Resolution:
        hosts = {h.lower() for h in self.settings.dataverse_hosts}
        landing = await self._landing(doi, "a known Dataverse installation", hosts)
        site = f"{self.settings.dataverse_scheme}://{urlsplit(landing).netloc.lower()}"
        reply = await self.api.get(
            f"{site}/api/datasets/:persistentId?persistentId={_q('doi:' + doi)}", source="Dataverse"
        )
        if reply.status in _NOT_PUBLIC:
            raise ResolveError(
                f"No public Dataverse dataset {doi} on {site}", FailureReason.REF_NOT_FOUND
            )
        data = _ok(reply, "Dataverse")
        if _need(data, "Dataverse", "status") != "OK":
            raise ResolveError(f"Dataverse could not find {doi}", FailureReason.REF_NOT_FOUND)
        dataset = _need(data, "Dataverse", "data")
        latest = _need(dataset, "Dataverse", "latestVersion")
        version = (
            f"{int(_need(dataset, 'Dataverse', 'id'))}.v"
            f"{int(_need(latest, 'Dataverse', 'versionNumber'))}."
            f"{int(_need(latest, 'Dataverse', 'versionMinorNumber'))}"
        )
        return Resolution(
            f"{site}/dataset.xhtml?persistentId={_q('doi:' + doi)}", "", version, False
        )

    async def _hydroshare(self, resource_id: str) -> Resolution:
        base = self.settings.hydroshare_url
        reply = await self.api.get(
            f"{base}/hsapi/resource/{resource_id}/scimeta/elements", source="HydroShare"
        )
        if reply.status in _NOT_PUBLIC:
            raise ResolveError(
                f"No public HydroShare resource {resource_id}", FailureReason.REF_NOT_FOUND
            )
        dates = _need(_ok(reply, "HydroShare"), "HydroShare", "dates")
        modified = next(
            (d for d in dates if isinstance(d, dict) and d.get("type") == "modified"), None
        )
        if modified is None:
            raise ResolveError(
                "HydroShare answered without a modification date", FailureReason.REPO_UNREACHABLE
            )
        epoch = _epoch(str(_need(modified, "HydroShare", "start_date")), "HydroShare")
        return Resolution(f"{base}/resource/{resource_id}", "", f"{resource_id}.v{epoch}", False)

    async def _ckan(self, target: CkanTarget) -> Resolution:
        await self.policy.check_host(target.host)
        reply = await self.api.get(
            f"{target.api_base}/package_show?id={_q(target.dataset_id)}", source="The CKAN site"
        )
        if reply.status in _NOT_PUBLIC:
            raise ResolveError(
                f"No public CKAN dataset {target.dataset_id} at {target.url}",
                FailureReason.REF_NOT_FOUND,
            )
        data = _ok(reply, "The CKAN site")
        if _need(data, "The CKAN site", "success") is not True:
            raise ResolveError(
                f"CKAN could not find {target.dataset_id}", FailureReason.REF_NOT_FOUND
            )
        if target.activity_id:
            return Resolution(target.url, "", f"{target.dataset_id}.{target.activity_id}", True)
        modified = str(_need(data, "The CKAN site", "result", "metadata_modified"))
        version = f"{target.dataset_id}.v{_epoch(modified, 'The CKAN site')}"
        return Resolution(target.url, "", version, False)

    async def _swhid(self, target: SwhidTarget) -> Resolution:
        kind = "revision" if target.kind == "rev" else "directory"
        headers = (
            {"Authorization": f"Bearer {self.settings.swh_token}"}
            if self.settings.swh_token
            else {}
        )
        reply = await self.api.get(
            f"{self.settings.swh_api_url}/{kind}/{target.hash}/",
            source="Software Heritage",
            headers=headers,
        )
        if reply.status in _NOT_FOUND:
            raise ResolveError(
                f"Software Heritage has no {kind} {target.hash}", FailureReason.REF_NOT_FOUND
            )
        _ok(reply, "Software Heritage")
        return Resolution(f"swh:1:{target.kind}:{target.hash}", "", target.hash, True)

    @staticmethod
    def _expect_sha(value: Any, source: str) -> str:
        if not isinstance(value, str) or not _SHA.match(value):
            raise ResolveError(
                f"{source} answered with an invalid commit id", FailureReason.REPO_UNREACHABLE
            )
        return value


def _ok(reply: Reply, source: str) -> Any:
    if reply.status != 200:
        raise ResolveError(
            f"{source} answered {reply.status}; try again later", FailureReason.REPO_UNREACHABLE
        )
    return reply.data
