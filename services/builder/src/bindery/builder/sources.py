"""What a build fetches: one provider's repository at one version, checked before anything uses it.

In: the provider, repository URL and resolved version of a ref-resolved event's launch context
(LaunchContext's docstring says what they hold per provider) -- strings a stranger's link
shaped -- and the operator's `ProviderHosts`. Out: a `Source` whose URL is rebuilt from the parts
that matched strict patterns, or ValueError saying what is wrong.

The rules, per provider: git-like providers (gh, gist, gl, git) take a URL of an allowed scheme
and a full commit SHA; zenodo, figshare, hydroshare and dataverse only URLs on the hosts
configured here (the resolver's same settings), with numeric record/article ids, 32-hex resource
ids and DOIs of a plain character set; ckan a dataset URL of http(s) whose dataset and activity
ids are plain words (the resolver checked the host's addresses); swhid a core identifier. No
field can start with `-`, hold whitespace, quotes or `..`: nothing here can become an option or
walk out of a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from bindery import providers

GIT_PROVIDERS = frozenset({"gh", "gist", "gl", "git"})
DATA_PROVIDERS = frozenset({"zenodo", "figshare", "hydroshare", "dataverse", "ckan", "swhid"})

# Commits only: the resolver turned branches and tags into one, and a SHA cannot be an option.
REF_PATTERN = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A URL with a scheme, no whitespace or quoting: git never sees anything it could read as an option.
URL_PATTERN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://[^\s\"'\\]+")
DEFAULT_SCHEMES = ("https", "http", "git", "ssh")

_NUMBER = r"[0-9]{1,20}"
_WORD = r"[A-Za-z0-9_-]{1,100}"
_HOST = re.compile(
    r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?|\[[0-9a-f:.]{2,45}\](:[0-9]{1,5})?"
)
# Dataverse DOIs (10.7910/DVN/TJCLKP): a prefix and a plain suffix, nothing to unquote or walk.
_DOI = re.compile(r"10\.[0-9]{4,9}/[A-Za-z0-9._/-]{1,200}")
_CKAN_PATH = re.compile(
    rf"(?P<prefix>(/[A-Za-z0-9_.~-]+)*)/dataset/(?P<dataset>{_WORD})(/history/(?P<activity>{_WORD}))?"
)


@dataclass(frozen=True)
class ProviderHosts:
    """Where the data-repository providers live; the resolver's settings of the same names.

    Only these hosts are ever asked for a record's files (CKAN: the dataset's own site)."""

    zenodo_url: str = providers.ZENODO_URL
    figshare_url: str = providers.FIGSHARE_URL
    figshare_api_url: str = providers.FIGSHARE_API_URL
    figshare_download_url: str = providers.FIGSHARE_DOWNLOAD_URL
    hydroshare_url: str = providers.HYDROSHARE_URL
    dataverse_hosts: tuple[str, ...] = providers.DATAVERSE_HOSTS
    dataverse_scheme: str = "https"
    swh_api_url: str = providers.SWH_API_URL
    ckan_hosts: tuple[str, ...] = ()
    """Empty: any CKAN site (the resolver refused those resolving to internal addresses)."""


@dataclass(frozen=True)
class Source:
    """A validated repository at one version. `url` is what the content provider fetches."""

    provider: str
    url: str
    version: str
    parts: dict[str, str] = field(default_factory=dict)
    """The validated pieces the content provider is pinned with (record id, DOI, ...)."""

    @property
    def is_git(self) -> bool:
        return self.provider in GIT_PROVIDERS


def origin(url: str) -> str:
    """scheme://host[:port] of a URL, lower-cased."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def check_source(
    provider: str,
    repo_url: str,
    version: str,
    hosts: ProviderHosts,
    schemes: tuple[str, ...] = DEFAULT_SCHEMES,
) -> Source:
    """The Source `provider`, `repo_url` and `version` name, or ValueError."""
    if provider in GIT_PROVIDERS:
        return _git(provider, repo_url, version, schemes)
    checker = {
        "zenodo": _zenodo,
        "figshare": _figshare,
        "hydroshare": _hydroshare,
        "dataverse": _dataverse,
        "ckan": _ckan,
        "swhid": _swhid,
    }.get(provider)
    if checker is None:
        known = ", ".join(sorted(GIT_PROVIDERS | DATA_PROVIDERS))
        raise ValueError(f"unknown provider {provider[:32]!r}: known providers are {known}")
    return checker(repo_url, version, hosts)


def _git(provider: str, repo_url: str, version: str, schemes: tuple[str, ...]) -> Source:
    url = URL_PATTERN.fullmatch(repo_url)
    if url is None or url["scheme"] not in schemes:
        raise ValueError(f"repository must be a URL with scheme {'/'.join(schemes)}")
    if REF_PATTERN.fullmatch(version) is None:
        raise ValueError("ref must be a full commit SHA")
    return Source(provider, repo_url, version)


def _under(repo_url: str, base: str, pattern: str, shape: str) -> re.Match[str]:
    """The match of `pattern` on what follows the configured `base` URL in `repo_url`."""
    base = base.rstrip("/")
    rest = repo_url[len(base) :] if repo_url.startswith(base + "/") else None
    match = re.fullmatch(pattern, rest) if rest is not None else None
    if match is None:
        raise ValueError(f"the repository URL must be {base}{shape}")
    return match


def _expect(version: str, expected: str, what: str) -> None:
    if version != expected:
        raise ValueError(f"the version {version[:80]!r} does not name this {what}")


def _zenodo(repo_url: str, version: str, hosts: ProviderHosts) -> Source:
    match = _under(repo_url, hosts.zenodo_url, rf"/records/(?P<record>{_NUMBER})", "/records/<id>")
    _expect(version, match["record"], "Zenodo record")
    url = f"{hosts.zenodo_url.rstrip('/')}/records/{match['record']}"
    return Source("zenodo", url, version, {"record": match["record"]})


def _figshare(repo_url: str, version: str, hosts: ProviderHosts) -> Source:
    match = _under(
        repo_url,
        hosts.figshare_url,
        rf"/articles/_/(?P<article>{_NUMBER})/(?P<version>{_NUMBER})",
        "/articles/_/<id>/<version>",
    )
    article, number = match["article"], match["version"]
    _expect(version, f"{article}.v{number}", "Figshare article version")
    url = f"{hosts.figshare_url.rstrip('/')}/articles/_/{article}/{number}"
    return Source("figshare", url, version, {"article": article, "version": number})


def _hydroshare(repo_url: str, version: str, hosts: ProviderHosts) -> Source:
    match = _under(
        repo_url,
        hosts.hydroshare_url,
        r"/resource/(?P<resource>[0-9a-f]{32})",
        "/resource/<32 hex>",
    )
    resource = match["resource"]
    if re.fullmatch(rf"{resource}\.v{_NUMBER}", version) is None:
        raise ValueError(f"the version {version[:80]!r} does not name this HydroShare resource")
    url = f"{hosts.hydroshare_url.rstrip('/')}/resource/{resource}"
    return Source("hydroshare", url, version, {"resource": resource})


def _dataverse(repo_url: str, version: str, hosts: ProviderHosts) -> Source:
    parts = urlsplit(repo_url)
    host = parts.netloc.lower()
    if parts.scheme != hosts.dataverse_scheme or host not in {
        h.lower() for h in hosts.dataverse_hosts
    }:
        raise ValueError(
            f"a Dataverse URL must be on a configured installation "
            f"({', '.join(hosts.dataverse_hosts)}) over {hosts.dataverse_scheme}"
        )
    query = re.fullmatch(r"persistentId=doi(:|%3A)(?P<doi>[^&#]+)", parts.query)
    doi = query["doi"].replace("%2F", "/").replace("%2f", "/") if query else ""
    if parts.path != "/dataset.xhtml" or _DOI.fullmatch(doi) is None or ".." in doi:
        raise ValueError(
            "a Dataverse URL must be https://<installation>/dataset.xhtml?persistentId=doi:10.<n>/<id>"
        )
    if re.fullmatch(rf"{_NUMBER}\.v{_NUMBER}\.{_NUMBER}", version) is None:
        raise ValueError(f"the version {version[:80]!r} is not a Dataverse dataset version")
    site = f"{parts.scheme}://{host}"
    url = f"{site}/dataset.xhtml?persistentId={quote('doi:' + doi, safe='')}"
    return Source("dataverse", url, version, {"site": site, "doi": doi})


def _ckan(repo_url: str, version: str, hosts: ProviderHosts) -> Source:
    parts = urlsplit(repo_url)
    host = parts.netloc.lower()
    if parts.scheme not in {"http", "https"} or _HOST.fullmatch(host) is None:
        raise ValueError("a CKAN dataset URL must be http(s)://<host>/dataset/<id>")
    if hosts.ckan_hosts and host not in {h.lower() for h in hosts.ckan_hosts}:
        raise ValueError(f"CKAN sites are limited to {', '.join(hosts.ckan_hosts)}")
    path = _CKAN_PATH.fullmatch(parts.path)
    if path is None or parts.query or parts.fragment or ".." in parts.path:
        raise ValueError("a CKAN dataset URL must be http(s)://<host>/dataset/<id>")
    dataset, activity = path["dataset"], path["activity"] or ""
    expected = f"{dataset}.{activity}" if activity else None
    if (expected and version != expected) or (
        not expected and re.fullmatch(rf"{re.escape(dataset)}\.v{_NUMBER}", version) is None
    ):
        raise ValueError(f"the version {version[:80]!r} does not name this CKAN dataset")
    site = f"{parts.scheme}://{host}{path['prefix']}"
    url = f"{site}/dataset/{dataset}" + (f"/history/{activity}" if activity else "")
    return Source(
        "ckan",
        url,
        version,
        {"site": site, "dataset": dataset, "activity": activity},
    )


def _swhid(repo_url: str, version: str, hosts: ProviderHosts) -> Source:
    match = re.fullmatch(r"swh:1:(?P<kind>dir|rev):(?P<hash>[0-9a-f]{40})", repo_url)
    if match is None:
        raise ValueError("a Software Heritage identifier must be swh:1:dir|rev:<40 hex>")
    _expect(version, match["hash"], "Software Heritage object")
    return Source("swhid", repo_url, version, {"kind": match["kind"], "hash": match["hash"]})
