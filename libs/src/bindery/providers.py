"""The catalogue of repository providers: names, labels and spec patterns, in one place.

In: nothing (static data). Out: `PROVIDERS` for the gateway's `GET /api/repoproviders` (BinderHub's
`display_config` shape, which launch forms use to detect a provider from a pasted URL), the
gateway's quick syntax check before a launch is accepted, the resolver's list of names, the
public hosts of every provider (the defaults of the resolver's and the builder's settings) and the
default Dataverse installations the resolver and the builder both trust, and `binder_env`: the
BinderHub variables of a launch (the resolver's for sessions, the gateway's for `ready`).
The resolver stays the authority on what a spec means; these patterns only turn away what can
never be valid, early and with a message a person can act on.

Detection regexes use JavaScript's named-group syntax `(?<name>...)` because browsers run them;
`detect()` translates them for Python so the same table is tested here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

_DOI = r"^([dD][oO][iI](:|%3A))?10\.[0-9]{4,9}(/|%2F).+$"


@dataclass(frozen=True)
class Provider:
    id: str
    display_name: str
    repo_label: str
    placeholder: str
    ref_label: str
    ref_enabled: bool
    validate_regex: str
    """What the spec (as it appears in `/build/<provider>/<spec>`, still percent-encoded) must
    match."""
    detect_regexes: tuple[str, ...] = ()
    """URLs a person may paste, with groups `repo` (and `ref`, `filepath`, `urlpath`)."""
    url_encode: bool = False
    """Whether the launch form must percent-encode the repository part (git, gl, ckan)."""

    def display_config(self) -> dict[str, Any]:
        """BinderHub's `/api/repoproviders` entry, plus its older `labels` block."""
        config: dict[str, Any] = {
            "id": self.id,
            "displayName": self.display_name,
            "repo": {
                "label": self.repo_label,
                "placeholder": self.placeholder,
                "urlEncode": self.url_encode,
            },
            "ref": {"enabled": self.ref_enabled, "default": "HEAD" if self.ref_enabled else ""},
            "spec": {"validateRegex": self.validate_regex},
            "labels": {
                "text": self.repo_label,
                "tag_text": self.ref_label,
                "ref_prop_disabled": not self.ref_enabled,
                "label_prop_disabled": not self.ref_enabled,
            },
        }
        if self.detect_regexes:
            config["detect"] = {"regex": self.detect_regexes[0], "regexes": self.detect_regexes}
        return config


# Where each provider lives on the public internet: the defaults of the resolver's settings (it
# resolves specs there) and of the builder's (it fetches records' files from the same hosts),
# named once so the two cannot disagree.
GITHUB_URL = "https://github.com"
GITHUB_API_URL = "https://api.github.com"
GIST_URL = "https://gist.github.com"
GITLAB_URL = "https://gitlab.com"
DOI_RESOLVER_URL = "https://doi.org"
ZENODO_URL = "https://zenodo.org"
FIGSHARE_URL = "https://figshare.com"
FIGSHARE_API_URL = "https://api.figshare.com/v2"
FIGSHARE_DOWNLOAD_URL = "https://ndownloader.figshare.com"
HYDROSHARE_URL = "https://www.hydroshare.org"
SWH_API_URL = "https://archive.softwareheritage.org/api/1"

DATAVERSE_HOSTS = (
    "dataverse.harvard.edu",
    "dataverse.nl",
    "data.goettingen-research-online.de",
    "borealisdata.ca",
    "dataverse.no",
    "recherche.data.gouv.fr",
    "edmond.mpg.de",
)
"""The public Dataverse installations a DOI may lead to, by default: the resolver resolves DOIs
only to these and the builder fetches files only from them, so both read this one list."""

_GIT_REF = "Git ref (branch, tag, or commit)"
_NO_REF = "No ref: the identifier names one version"


def _doi_provider(provider_id: str, name: str, example: str, doi_regex: str) -> Provider:
    """A data repository launched by DOI, bare or as a doi.org link; `doi_regex` its DOIs."""
    return Provider(
        id=provider_id,
        display_name=f"{name} DOI",
        repo_label=f"{name} DOI ({example})",
        placeholder=example,
        ref_label=_NO_REF,
        ref_enabled=False,
        validate_regex=_DOI,
        detect_regexes=(rf"^(https://doi\.org/|doi:)?(?<repo>{doi_regex})$",),
    )


PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in (
        Provider(
            id="gh",
            display_name="GitHub",
            repo_label="GitHub repository name or URL",
            placeholder="binder-examples/requirements or https://github.com/binder-examples/requirements",
            ref_label=_GIT_REF,
            ref_enabled=True,
            validate_regex=r"^[^/]+/[^/]+(/.+)?$",
            detect_regexes=(
                r"^https://github\.com/(?<repo>[^/]+/[^/]+?)(\.git)?/(blob)/(?<ref>[^/]+)(/(?<filepath>.+))?$",
                r"^https://github\.com/(?<repo>[^/]+/[^/]+?)(\.git)?(/tree/(?<ref>[^/]+)(/(?<urlpath>.+))?)?/?$",
            ),
        ),
        Provider(
            id="gist",
            display_name="Gist",
            repo_label="Gist ID (username/gistId) or URL",
            placeholder="https://gist.github.com/owner/0123456789abcdef",
            ref_label="Git commit SHA",
            ref_enabled=True,
            validate_regex=r"^[^/]+/[^/]+(/[^/]+)?$",
            detect_regexes=(
                r"^https://gist\.github\.com/(?<repo>[^/]+/[^/]+)(/(?<ref>[^/]+))?/?$",
            ),
        ),
        Provider(
            id="gl",
            display_name="GitLab.com",
            repo_label="GitLab.com repository or URL",
            placeholder="https://gitlab.com/group/project",
            ref_label=_GIT_REF,
            ref_enabled=True,
            validate_regex=r"^[^/]+(/.+)?$",
            detect_regexes=(
                r"^https://gitlab\.com/(?<repo>[^/]+/[^/]+(/[^/-][^/]*)*?)(\.git)?/-/blob/(?<ref>[^/]+)(/(?<filepath>.+))?$",
                r"^https://gitlab\.com/(?<repo>[^/]+/[^/]+(/[^/-][^/]*)*?)(\.git)?(/-/tree/(?<ref>[^/]+)(/(?<urlpath>.+))?)?/?$",
            ),
            url_encode=True,
        ),
        _doi_provider("zenodo", "Zenodo", "10.5281/zenodo.3242074", r"10\.5281/zenodo\.[0-9]+"),
        _doi_provider(
            "figshare",
            "Figshare",
            "10.6084/m9.figshare.9782777.v1",
            r"10\.6084/m9\.figshare\.[0-9]+(\.v[0-9]+)?",
        ),
        Provider(
            id="hydroshare",
            display_name="Hydroshare resource",
            repo_label="Hydroshare resource id or URL",
            placeholder="https://www.hydroshare.org/resource/b8f6eae9d89241cf8b5904033460af61",
            ref_label=_NO_REF,
            ref_enabled=False,
            validate_regex=r"^.*[0-9a-f]{32}.*$",
            detect_regexes=(r"^https://www\.hydroshare\.org/resource/(?<repo>[0-9a-f]{32})/?$",),
        ),
        _doi_provider("dataverse", "Dataverse", "10.7910/DVN/TJCLKP", r"10\.7910/DVN/[A-Za-z0-9]+"),
        Provider(
            id="ckan",
            display_name="CKAN dataset",
            repo_label="CKAN dataset URL (https://demo.ckan.org/dataset/sample-dataset-1)",
            placeholder="https://demo.ckan.org/dataset/sample-dataset-1",
            ref_label=_NO_REF,
            ref_enabled=False,
            validate_regex=r"^[hH][tT][tT][pP][sS]?(:|%3A|%3a).+$",
            detect_regexes=(r"^(?<repo>https?://[^/]+(/[^/]+)*/dataset/[^/?#]+.*)$",),
            url_encode=True,
        ),
        Provider(
            id="swhid",
            display_name="Software Heritage",
            repo_label="Software Heritage identifier (swh:1:dir:... or swh:1:rev:...)",
            placeholder="swh:1:rev:0123456789abcdef0123456789abcdef01234567",
            ref_label=_NO_REF,
            ref_enabled=False,
            validate_regex=r"^swh(:|%3A|%3a)1(:|%3A|%3a)(dir|rev)(:|%3A|%3a)[0-9a-f]{40}([;%].*)?$",
            detect_regexes=(r"^(?<repo>swh:1:(dir|rev):[0-9a-f]{40}(;.*)?)$",),
        ),
        # Last: its detection pattern matches any URL the others did not claim.
        Provider(
            id="git",
            display_name="Git repository",
            repo_label="Arbitrary git repository URL (http://git.example.com/repo)",
            placeholder="https://git.example.com/repo.git",
            ref_label=_GIT_REF,
            ref_enabled=True,
            validate_regex=r"^[^/]+(/.+)?$",
            detect_regexes=(r"^(?<repo>(https?|git|ssh)://.+)$",),
            url_encode=True,
        ),
    )
}

_JS_GROUP = re.compile(r"\(\?<(?=[A-Za-z_])")


def _python_regex(js_regex: str) -> re.Pattern[str]:
    return re.compile(_JS_GROUP.sub("(?P<", js_regex))


def spec_syntax_error(provider: str, spec: str) -> str | None:
    """Why `spec` can never be a valid `provider` spec, or None if it might be."""
    entry = PROVIDERS.get(provider)
    if entry is None:
        return f"unknown provider {provider!r}: known providers are {', '.join(sorted(PROVIDERS))}"
    if not _python_regex(entry.validate_regex).match(spec):
        return f"{spec[:80]!r} is not a {entry.display_name} spec: use {entry.placeholder}"
    return None


def detect(url: str) -> tuple[str, str] | None:
    """(provider, spec) for a URL pasted into the launch form, as the browser would detect it."""
    url = url.strip()
    for entry in PROVIDERS.values():
        for regex in entry.detect_regexes:
            match = _python_regex(regex).match(url)
            if match is None:
                continue
            groups = match.groupdict()
            repo = groups["repo"]
            if entry.url_encode:
                repo = quote(repo, safe="")
            if not entry.ref_enabled:
                return entry.id, repo
            return entry.id, f"{repo}/{quote(groups.get('ref') or 'HEAD', safe='')}"
    return None


def binder_env(
    launch_host: str, provider: str, spec: str, repo_url: str, resolved_ref: str
) -> dict[str, str]:
    """The environment variables BinderHub gives every session (its spawner's `get_env`), for a
    launch of `provider`/`spec` (as the link has it) that resolved to `repo_url` at
    `resolved_ref`, made on the site `launch_host` (`https://host/`, with its slash).

    The request paths are relative, as BinderHub's: `v2/<provider>/<spec>` as asked for, and
    with the ref replaced by the commit (a link that always opens this version). The ref URL
    is the commit's page where the provider has one (BinderHub's `get_resolved_ref_url`); a
    plain git repository and the data repositories (whose URL names the version) give theirs.
    """
    persistent = spec
    if resolved_ref and PROVIDERS[provider].ref_enabled:
        persistent = f"{spec.rsplit('/', 1)[0]}/{resolved_ref}"
    plain = repo_url.removesuffix(".git")
    ref_urls = {
        "gh": f"{plain}/tree/{resolved_ref}",
        "gl": f"{plain}/tree/{resolved_ref}",
        "gist": f"{plain}/{resolved_ref}",
    }
    return {
        "BINDER_LAUNCH_HOST": launch_host,
        "BINDER_REPO_URL": repo_url,
        "BINDER_REF_URL": ref_urls.get(provider, repo_url) if resolved_ref else repo_url,
        "BINDER_REQUEST": f"v2/{provider}/{spec}",
        "BINDER_PERSISTENT_REQUEST": f"v2/{provider}/{persistent}",
    }
