"""Resolver settings (`BINDERY_*` environment variables; lists and tables are JSON)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bindery import providers
from bindery.events import RepoConfig
from bindery.settings import CommonSettings


class SpecConfig(BaseModel):
    """Per-repository settings: every entry whose `pattern` matches a spec applies, in order.
    `config` takes the keys of `RepoConfig` only (today `quota`): a key nothing would read stops
    the resolver at start ("Extra inputs are not permitted"), rather than doing nothing."""

    pattern: str
    config: RepoConfig


class ResolverSettings(CommonSettings):
    health_port: int = 8591
    """Where this service's /health and /metrics listen (on `health_host`): each service has a
    port of its own, so all of them run side by side on one machine."""

    image_prefix: str = "bindery/"
    """Images land in `<registry>/<image_prefix><repo slug>:<commit>`."""

    git_timeout: float = 30.0
    """A git server that does not answer `ls-remote` within this is reported unreachable, so a
    launch never hangs on a dead host."""

    http_timeout: float = 15.0
    """Upper bound for one provider API request (connect + answer): a provider that is down
    fails the launch with a clear message instead of leaving the person waiting."""

    resolve_timeout: float = 45.0
    """Upper bound for resolving one spec, all requests included (a DOI takes two or three)."""

    max_ref_length: int = 255
    """A longer branch, tag or commit name is refused: git's own refs fit in 255 bytes (a path
    component of most filesystems)."""

    cache_ttl: float = 60.0
    """How long a resolved branch or tag is reused without asking the provider again: a
    popular link clicked by a class of 100 costs one lookup a minute, and a new push shows up
    within a minute. Full commit SHAs and record versions never change and stay cached."""

    negative_cache_ttl: float = 10.0
    """A missing ref or repository is remembered this long, so a broken badge clicked
    repeatedly does not hammer the provider, yet a branch pushed just now is found soon."""

    cache_size: int = 4096
    """Resolved refs (and provider API answers' ETags) remembered at once, least recently used
    out first: far more repositories than are launched within `cache_ttl`, in little memory."""

    banned_specs: list[str] = Field(default_factory=list)
    """Case-insensitive regexes matched (from the start) against `<provider>/<decoded spec>`,
    e.g. `gh/evil-org/.*` or `git/https://bad\\.example/.*`: a match fails with reason `banned`."""

    allowed_specs: list[str] = Field(default_factory=list)
    """When set, only specs matching one of these are launched; the rest count as banned."""

    high_quota_specs: list[str] = Field(default_factory=list)
    """Specs that get `per_repo_quota_higher` instead of `per_repo_quota` (workshops, courses)."""

    per_repo_quota: int | None = Field(default=None, ge=1)
    """Concurrent sessions per repository; None leaves the scheduler's default. mybinder.org
    publishes a per-repository limit without a fixed number, so the operator chooses."""

    per_repo_quota_higher: int | None = Field(default=None, ge=1)
    """The concurrent sessions of a repository matching `high_quota_specs`; None: the same as
    `per_repo_quota`."""

    spec_config: list[SpecConfig] = Field(default_factory=list)
    """Per-repository configuration; a `quota` key overrides the quota above (the scheduler
    enforces it)."""

    trusted_networks: list[str] = Field(default_factory=list)
    """CIDRs accepted as repository hosts although they are not global (an internal GitLab at
    10.0.0.5 -> `["10.0.0.5/32"]`). Everything else internal is refused (SSRF)."""

    github_url: str = providers.GITHUB_URL
    """Where GitHub repositories are cloned from (`gh` specs); see `github_api_url`."""
    github_api_url: str = providers.GITHUB_API_URL
    """GitHub Enterprise: `https://github.example.org` and `https://github.example.org/api/v3`."""

    github_token: str = Field(default="", repr=False)
    """Optional: lifts GitHub's anonymous limit of 60 API requests an hour to 5,000."""

    gist_url: str = providers.GIST_URL
    """Where gists are cloned from (`gist` specs)."""

    allow_secret_gists: bool = False
    """Secret gists are unlisted on purpose; launching them needs the operator's consent."""

    gitlab_url: str = providers.GITLAB_URL
    """The GitLab installation `gl` specs name projects on (its API is under `/api/v4`)."""

    gitlab_token: str = Field(default="", repr=False)
    """Optional private token, sent as the `PRIVATE-TOKEN` header (never in a logged URL)."""

    doi_resolver_url: str = providers.DOI_RESOLVER_URL
    """Where `doi` specs are looked up (the DOI's landing page names the record's host)."""

    zenodo_url: str = providers.ZENODO_URL
    """The Zenodo installation records are resolved on (the builder fetches from the same:
    one variable serves both)."""

    figshare_url: str = providers.FIGSHARE_URL
    """Figshare's site, whose landing pages DOIs lead to (the builder's of the same name)."""

    figshare_api_url: str = providers.FIGSHARE_API_URL
    """Figshare's API, which gives an article's versions (the builder's of the same name)."""

    hydroshare_url: str = providers.HYDROSHARE_URL
    """The HydroShare installation resources are resolved on (the builder's of the same name)."""

    dataverse_hosts: list[str] = Field(default_factory=lambda: list(providers.DATAVERSE_HOSTS))
    """Dataverse installations a DOI may lead to (https only). A DOI pointing elsewhere is
    refused: the resolver never requests a host a stranger chose through a DOI record."""

    dataverse_scheme: str = "https"
    """How Dataverse installations are reached: https; http only for tests' servers."""

    swh_api_url: str = providers.SWH_API_URL
    """Software Heritage's API, which `swh` specs (SWHIDs) are resolved through."""

    swh_token: str = Field(default="", repr=False)
    """Optional Software Heritage bearer token (higher rate limit)."""
