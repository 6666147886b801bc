"""Data-repository launches: what the builder accepts from a ref-resolved event, per provider.

Every string here reached the builder from a stranger's link (through the resolver); each hostile
one must fail validation with a message, before any request, path or subprocess is made of it.
"""

import re

import pytest
from repo2docker.contentproviders.base import ContentProviderException

from bindery.builder.datarepos import check_file_name, pinned
from bindery.builder.job import BuildJob, BuildOptions, BuildRequest
from bindery.builder.sources import ProviderHosts, check_source

HOSTS = ProviderHosts()
SHA = "5b1503fb6fd79906a6d75af32d4a014b5f31dc61"
RESOURCE = "b8f6eae9d89241cf8b5904033460af61"
DV = "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi%3A10.7910%2FDVN%2FTJCLKP"


@pytest.mark.parametrize(
    ("provider", "repo_url", "version", "url"),
    [
        ("zenodo", "https://zenodo.org/records/3242074", "3242074", None),
        ("figshare", "https://figshare.com/articles/_/9782777/2", "9782777.v2", None),
        (
            "hydroshare",
            f"https://www.hydroshare.org/resource/{RESOURCE}",
            f"{RESOURCE}.v1700000000",
            None,
        ),
        ("dataverse", DV, "3035124.v1.0", None),
        (
            "ckan",
            "https://demo.ckan.org/dataset/sample-dataset-1",
            "sample-dataset-1.v1700000000",
            None,
        ),
        ("ckan", "https://d.org/ckan/dataset/s_1/history/a-1", "s_1.a-1", None),
        ("swhid", f"swh:1:rev:{SHA}", SHA, None),
        ("gh", "https://github.com/binder-examples/requirements", SHA, None),
    ],
)
def test_each_provider_accepts_what_the_resolver_emits(
    provider: str, repo_url: str, version: str, url: str | None
) -> None:
    source = check_source(provider, repo_url, version, HOSTS)
    assert (source.provider, source.url, source.version) == (provider, url or repo_url, version)
    if not source.is_git:
        # Made without a single network call (repo2docker's detect() would call doi.org, ...).
        _, spec = pinned(source, HOSTS)
        assert spec


HOSTILE = [
    # unknown or spoofed provider
    ("zenodo ", "https://zenodo.org/records/1", "1", "unknown provider"),
    ("Local", "/etc", "x", "unknown provider"),
    # zenodo: host not configured, ids not numeric, traversal, option-like, version mismatch
    ("zenodo", "https://evil.example/records/1", "1", "must be https://zenodo.org/records/<id>"),
    ("zenodo", "https://zenodo.org.evil.example/records/1", "1", "must be"),
    ("zenodo", "http://127.0.0.1/records/1", "1", "must be"),
    ("zenodo", "https://zenodo.org/records/../admin", "..", "must be"),
    ("zenodo", "https://zenodo.org/records/1%2F..%2F2", "1", "must be"),
    ("zenodo", "https://zenodo.org/records/1?x=/etc", "1", "must be"),
    ("zenodo", "https://zenodo.org/records/1\n", "1", "must be"),
    ("zenodo", "https://zenodo.org/records/-1", "-1", "must be"),
    ("zenodo", "https://zenodo.org/records/١٢", "١٢", "must be"),
    ("zenodo", "https://zenodo.org/records/1", "2", "does not name"),
    ("zenodo", "https://zenodo.org/records/1", "--upload-pack=x", "does not name"),
    # figshare
    ("figshare", "https://figshare.com/articles/_/1/x", "1.vx", "must be"),
    ("figshare", "https://figshare.com/articles/_/1/2", "1.v3", "does not name"),
    ("figshare", "https://api.evil.example/articles/_/1/2", "1.v2", "must be"),
    # hydroshare
    (
        "hydroshare",
        f"https://www.hydroshare.org/resource/{RESOURCE}/..",
        f"{RESOURCE}.v1",
        "must be",
    ),
    ("hydroshare", "https://www.hydroshare.org/resource/XYZ", "XYZ.v1", "must be"),
    (
        "hydroshare",
        f"https://www.hydroshare.org/resource/{RESOURCE}",
        f"{RESOURCE}.v1;rm",
        "HydroShare",
    ),
    # dataverse: installations from configuration only, DOIs of a plain character set
    ("dataverse", DV.replace("dataverse.harvard.edu", "169.254.169.254"), "1.v1.0", "configured"),
    ("dataverse", DV.replace("https", "http"), "1.v1.0", "configured"),
    ("dataverse", DV.replace("dataset.xhtml", "api/admin"), "1.v1.0", "dataset.xhtml"),
    ("dataverse", DV + "%2F..%2F..", "1.v1.0", "dataset.xhtml"),
    ("dataverse", DV + "&persistentId=doi:10.1/x", "1.v1.0", "dataset.xhtml"),
    ("dataverse", DV.replace("TJCLKP", "TJ%0ACLKP"), "1.v1.0", "dataset.xhtml"),
    ("dataverse", DV, "latest", "Dataverse dataset version"),
    # ckan: any http(s) site, but plain ids, no traversal, no credentials, no other schemes
    ("ckan", "file:///etc/dataset/x", "x.v1", "http"),
    ("ckan", "ftp://d.org/dataset/x", "x.v1", "http"),
    ("ckan", "https://user:pw@d.org/dataset/x", "x.v1", "http"),
    ("ckan", "https://d.org/a/../dataset/x", "x.v1", "dataset"),
    ("ckan", "https://d.org/dataset/..", "...v1", "dataset"),
    ("ckan", "https://d.org/dataset/x%2F..", "x.v1", "dataset"),
    ("ckan", "https://d.org/dataset/x?activity_id=../y", "x.v1", "dataset"),
    ("ckan", "https://d.org/dataset/x", "y.v1", "does not name"),
    ("ckan", "https://d.org/dataset/x/history/a", "x.b", "does not name"),
    ("ckan", "https://d.org /dataset/x", "x.v1", "http"),
    # swhid
    ("swhid", f"swh:1:cnt:{SHA}", SHA, "swh:1:dir|rev"),
    ("swhid", f"swh:1:rev:{SHA};origin=https://evil", SHA, "swh:1:dir|rev"),
    ("swhid", f"swh:1:rev:{SHA}", SHA[::-1], "does not name"),
    # git-like providers keep their strict rules
    ("gh", "--upload-pack=touch /pwned", SHA, "URL"),
    ("git", "ext::sh -c touch% /pwned", SHA, "URL"),
    ("gl", "https://gitlab.com/g/p.git", "-b", "SHA"),
]


@pytest.mark.parametrize(("provider", "repo_url", "version", "problem"), HOSTILE)
def test_hostile_sources_are_refused_with_a_reason(
    provider: str, repo_url: str, version: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_source(provider, repo_url, version, HOSTS)


def test_hosts_come_from_configuration() -> None:
    local = ProviderHosts(zenodo_url="http://127.0.0.1:8080/zenodo", dataverse_hosts=())
    assert check_source("zenodo", "http://127.0.0.1:8080/zenodo/records/7", "7", local).url
    with pytest.raises(ValueError):
        check_source("zenodo", "https://zenodo.org/records/7", "7", local)
    with pytest.raises(ValueError, match="configured"):
        check_source("dataverse", DV, "1.v1.0", local)
    only = ProviderHosts(ckan_hosts=("demo.ckan.org",))
    with pytest.raises(ValueError, match="limited to demo"):
        check_source("ckan", "https://d.org/dataset/x", "x.v1", only)


def test_the_provider_travels_to_the_build_process_as_a_value() -> None:
    hosts = ProviderHosts(zenodo_url="http://127.0.0.1:1/zenodo")
    request = BuildRequest("http://127.0.0.1:1/zenodo/records/5", "5", "r/i:t", provider="zenodo")
    job = BuildJob.from_json(BuildJob(request, BuildOptions(provider_hosts=hosts)).to_json())
    assert (job.source.provider, job.source.url, job.options.provider_hosts) == (
        "zenodo",
        request.repo_url,
        hosts,
    )
    # A stranger's provider name is a value too: never an option.
    evil = BuildRequest("https://zenodo.org/records/1", "1", "r/i:t", push=False, provider="--push")
    with pytest.raises(ValueError, match="unknown provider"):
        BuildJob(evil, BuildOptions())


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/cron.d/x", "a\nb", "", "..", "a\\..\\..\\x", None, 7]
)
def test_record_file_names_cannot_leave_the_checkout(name: object) -> None:
    with pytest.raises(ContentProviderException, match="unsafe name"):
        check_file_name(name)


def test_plain_record_file_names_pass() -> None:
    for name in ("requirements.txt", "data/values.csv", "binder/apt.txt", "a..b.txt"):
        assert check_file_name(name) == name
