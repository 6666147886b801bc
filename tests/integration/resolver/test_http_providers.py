"""Every HTTP provider against a local server answering with that provider's documented
response shapes: resolved ids, image names, caching, and the failures a person sees."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bindery.events import Event, FailureReason, LaunchFailed, LaunchRequested, RefResolved
from bindery.naming import repo_slug
from bindery.resolver.resolve import Resolver
from bindery.resolver.settings import ResolverSettings
from bindery.settings import Profile
from tests.support.fakeproviders import FakeProviders

SHA_MAIN = "a" * 40
SHA_DEV = "b" * 40
HS_ID = "0123456789abcdef0123456789abcdef"


class NoImages:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def image_exists(self, image: str) -> bool:
        self.asked.append(image)
        return False


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviders]:
    server = FakeProviders(
        github_refs={"owner/repo": {"HEAD": SHA_MAIN, "main": SHA_MAIN, "dev": SHA_DEV}},
        github_moved={"old/name": "owner/repo"},
        gists={
            "abc123": {"public": True, "history": [{"version": SHA_DEV}, {"version": SHA_MAIN}]},
            "5ec2e7": {"public": False, "history": [{"version": SHA_MAIN}]},
        },
        gitlab_refs={"group/sub/project": {"HEAD": SHA_MAIN, "v1.0": SHA_DEV}},
        zenodo_records={"100": 102, "102": 102},
        figshare_versions={"9782777": [1, 2, 3]},
        dataverse={
            "doi:10.7910/DVN/TJCLKP": {
                "id": 3035124,
                "identifier": "DVN/TJCLKP",
                "authority": "10.7910",
                "persistentUrl": "https://doi.org/10.7910/DVN/TJCLKP",
                "latestVersion": {"versionNumber": 3, "versionMinorNumber": 1},
            }
        },
        hydroshare_modified={HS_ID: "2019-09-25T15:21:38.123456Z"},
        ckan_modified={"sample-dataset-1": "2023-05-01T12:00:00.123456"},
        swh_objects={"revision/" + "c" * 40, "directory/" + "d" * 40},
    )
    await server.start()
    server.dois.update(
        {
            "10.5281/zenodo.100": server.url("/zenodo/records/100"),
            "10.5281/zenodo.102": server.url("/zenodo/record/102"),
            "10.5281/zenodo.666": "http://169.254.169.254/zenodo/records/666",
            "10.6084/m9.figshare.9782777": server.url("/figshare/articles/dataset/title/9782777"),
            "10.6084/m9.figshare.9782777.v2": server.url("/figshare/articles/code/title/9782777/2"),
            "10.6084/m9.figshare.9782777.v9": server.url("/figshare/articles/x/9782777/9"),
            "10.7910/DVN/TJCLKP": server.url(
                "/dataverse/citation?persistentId=doi:10.7910/DVN/TJCLKP"
            ),
        }
    )
    yield server
    await server.stop()


def make_settings(fake: FakeProviders, **overrides: Any) -> ResolverSettings:
    values: dict[str, Any] = {
        "profile": Profile.PRODUCTION,
        "github_api_url": fake.url("/github"),
        "gitlab_url": fake.url("/gitlab"),
        "doi_resolver_url": fake.url("/doi"),
        "zenodo_url": fake.url("/zenodo"),
        "figshare_url": fake.url("/figshare"),
        "figshare_api_url": fake.url("/figshare/v2"),
        "hydroshare_url": fake.url("/hydroshare"),
        "dataverse_hosts": [f"127.0.0.1:{fake.port}"],
        "dataverse_scheme": "http",
        "swh_api_url": fake.url("/swh/api/1"),
        "http_timeout": 2.0,
        **overrides,
    }
    return ResolverSettings(**values)


class Harness:
    """A resolver with a registry that holds no images; closed by the `harnesses` fixture."""

    made: list[Harness] = []

    def __init__(self, settings: ResolverSettings) -> None:
        Harness.made.append(self)
        self.events: list[Event] = []
        self.registry = NoImages()

        async def publish(event: Event) -> None:
            self.events.append(event)

        self.resolver = Resolver.create(settings, self.registry, publish)

    async def launch(self, provider: str, spec: str) -> Event:
        await self.resolver.on_launch_requested(
            LaunchRequested(launch_id="l1", provider=provider, spec=spec)
        )
        return self.events[-1]

    async def resolved(self, provider: str, spec: str) -> RefResolved:
        event = await self.launch(provider, spec)
        assert isinstance(event, RefResolved), event
        return event

    async def failed(self, provider: str, spec: str, reason: FailureReason) -> str:
        event = await self.launch(provider, spec)
        assert isinstance(event, LaunchFailed), event
        assert event.reason is reason, event.message
        return event.message


@pytest.fixture(autouse=True)
async def close_harnesses() -> AsyncIterator[None]:
    yield
    while Harness.made:
        await Harness.made.pop().resolver.close()


@pytest.fixture
def harness(fake: FakeProviders) -> Harness:
    return Harness(make_settings(fake))


def image_for(repo_url: str, tag: str) -> str:
    return f"127.0.0.1:5000/bindery/{repo_slug(repo_url)}:{tag}"


# --- GitHub ---


@pytest.mark.parametrize(
    ("spec", "sha"),
    [
        ("owner/repo/main", SHA_MAIN),
        ("owner/repo/dev", SHA_DEV),
        ("owner/repo", SHA_MAIN),
        ("owner/repo/HEAD", SHA_MAIN),
        ("owner/repo.git/dev", SHA_DEV),
        ("owner/repo/bbbbbbb", SHA_DEV),
        ("old/name/main", SHA_MAIN),
    ],
)
async def test_github_resolves_branches_short_shas_default_branch_and_renames(
    harness: Harness, spec: str, sha: str
) -> None:
    event = await harness.resolved("gh", spec)
    assert event.context.resolved_ref == sha
    assert event.context.repo_url in {
        "https://github.com/owner/repo",
        "https://github.com/old/name",
    }
    assert event.image == image_for(event.context.repo_url, sha)
    assert harness.registry.asked == [event.image]


async def test_github_full_sha_is_checked_and_then_cached_forever(
    harness: Harness, fake: FakeProviders
) -> None:
    first = await harness.resolved("gh", f"owner/repo/{SHA_DEV}")
    assert first.image == image_for("https://github.com/owner/repo", SHA_DEV)
    await harness.resolved("gh", f"owner/repo/{SHA_DEV}")
    assert len(fake.requests_to("/github/")) == 1


async def test_github_token_travels_in_a_header_never_in_the_url(fake: FakeProviders) -> None:
    harness = Harness(make_settings(fake, github_token="ghp_secret_value"))
    await harness.resolved("gh", "owner/repo/main")
    request = fake.requests_to("/github/")[-1]
    assert request.headers["Authorization"] == "Bearer ghp_secret_value"
    assert "secret" not in request.path


async def test_github_etag_revalidation_reuses_the_answer_on_304(fake: FakeProviders) -> None:
    harness = Harness(make_settings(fake, cache_ttl=0))
    assert (await harness.resolved("gh", "owner/repo/dev")).context.resolved_ref == SHA_DEV
    assert (await harness.resolved("gh", "owner/repo/dev")).context.resolved_ref == SHA_DEV
    first, second = fake.requests_to("/github/repos/owner/repo/commits/dev")
    assert "If-None-Match" not in first.headers
    assert second.headers["If-None-Match"].startswith('W/"')


async def test_a_popular_link_asks_github_once_within_the_ttl(
    harness: Harness, fake: FakeProviders
) -> None:
    await asyncio.gather(*(harness.resolved("gh", "owner/repo/main") for _ in range(5)))
    await harness.resolved("gh", "owner/repo/main")
    assert len(fake.requests_to("/github/")) == 1


async def test_missing_github_ref_fails_and_is_remembered_briefly(
    harness: Harness, fake: FakeProviders
) -> None:
    message = await harness.failed("gh", "owner/repo/nope", FailureReason.REF_NOT_FOUND)
    assert "'nope'" in message and "owner/repo" in message
    await harness.failed("gh", "owner/repo/nope", FailureReason.REF_NOT_FOUND)
    assert len(fake.requests_to("/github/")) == 1
    await harness.failed("gh", "someone/missing/main", FailureReason.REF_NOT_FOUND)


async def test_github_ref_is_quoted_into_one_path_segment(
    harness: Harness, fake: FakeProviders
) -> None:
    await harness.failed("gh", "owner/repo/feature%2Fx", FailureReason.REF_NOT_FOUND)
    assert fake.seen[-1].path == "/github/repos/owner/repo/commits/feature%2Fx"


async def test_github_rate_limit_says_when_to_try_again(
    harness: Harness, fake: FakeProviders
) -> None:
    fake.rate_limited.add("github")
    message = await harness.failed("gh", "owner/repo/main", FailureReason.REPO_UNREACHABLE)
    assert "rate limit" in message and "try again in 10 minutes" in message


async def test_github_server_error_is_reported(harness: Harness, fake: FakeProviders) -> None:
    fake.broken.add("github")
    message = await harness.failed("gh", "owner/repo/main", FailureReason.REPO_UNREACHABLE)
    assert "GitHub is having trouble (it answered 502)" in message


async def test_a_provider_that_never_answers_fails_within_the_bound(
    fake: FakeProviders,
) -> None:
    fake.silent.add("github")
    harness = Harness(make_settings(fake, http_timeout=0.5))
    message = await asyncio.wait_for(
        harness.failed("gh", "owner/repo/main", FailureReason.REPO_UNREACHABLE), 10
    )
    assert "did not answer within" in message


# --- Gist ---


async def test_gist_head_is_the_newest_revision_and_old_revisions_resolve(
    harness: Harness,
) -> None:
    head = await harness.resolved("gist", "someone/abc123")
    assert (head.context.resolved_ref, head.context.repo_url) == (
        SHA_DEV,
        "https://gist.github.com/someone/abc123.git",
    )
    assert (
        await harness.resolved("gist", f"someone/abc123/{SHA_MAIN}")
    ).context.resolved_ref == SHA_MAIN
    await harness.failed("gist", f"someone/abc123/{'e' * 40}", FailureReason.REF_NOT_FOUND)
    await harness.failed("gist", "someone/fff000", FailureReason.REF_NOT_FOUND)


async def test_secret_gists_are_refused_unless_allowed(fake: FakeProviders) -> None:
    message = await Harness(make_settings(fake)).failed(
        "gist", "someone/5ec2e7", FailureReason.BANNED
    )
    assert "secret" in message
    allowed = Harness(make_settings(fake, allow_secret_gists=True))
    assert (await allowed.resolved("gist", "someone/5ec2e7")).context.resolved_ref == SHA_MAIN


# --- GitLab ---


async def test_gitlab_nested_namespace_is_quoted_and_token_sent_as_header(
    fake: FakeProviders,
) -> None:
    harness = Harness(make_settings(fake, gitlab_token="glpat-secret"))
    event = await harness.resolved("gl", "group%2Fsub%2Fproject/v1.0")
    assert event.context.resolved_ref == SHA_DEV
    assert event.context.repo_url == fake.url("/gitlab/group/sub/project.git")
    request = fake.requests_to("/gitlab/")[-1]
    assert request.path == "/gitlab/api/v4/projects/group%2Fsub%2Fproject/repository/commits/v1.0"
    assert request.headers["PRIVATE-TOKEN"] == "glpat-secret"
    assert (await harness.resolved("gl", "group%2Fsub%2Fproject")).context.resolved_ref == SHA_MAIN
    await harness.failed("gl", "group%2Fsub%2Fproject/nope", FailureReason.REF_NOT_FOUND)


async def test_gitlab_429_gives_a_clear_failure(harness: Harness, fake: FakeProviders) -> None:
    fake.rate_limited.add("gitlab")
    message = await harness.failed(
        "gl", "group%2Fsub%2Fproject/HEAD", FailureReason.REPO_UNREACHABLE
    )
    assert "try again in 2 minutes" in message


# --- DOI-based: Zenodo, Figshare, Dataverse ---


async def test_zenodo_concept_doi_resolves_to_the_latest_record(
    harness: Harness, fake: FakeProviders
) -> None:
    event = await harness.resolved("zenodo", "10.5281/zenodo.100")
    assert (event.context.resolved_ref, event.context.repo_url) == (
        "102",
        fake.url("/zenodo/records/102"),
    )
    assert event.image == image_for(event.context.repo_url, "102")
    pinned = await harness.resolved("zenodo", "doi:10.5281/zenodo.102")
    assert pinned.context.resolved_ref == "102"


async def test_zenodo_unknown_doi_and_foreign_landing_page(
    harness: Harness, fake: FakeProviders
) -> None:
    assert "does not exist" in await harness.failed(
        "zenodo", "10.5281/zenodo.404", FailureReason.REF_NOT_FOUND
    )
    message = await harness.failed("zenodo", "10.5281/zenodo.666", FailureReason.INVALID_SPEC)
    assert "169.254.169.254" in message and "not Zenodo" in message


async def test_figshare_versions(harness: Harness, fake: FakeProviders) -> None:
    latest = await harness.resolved("figshare", "10.6084/m9.figshare.9782777")
    assert latest.context.resolved_ref == "9782777.v3"
    assert latest.context.repo_url == fake.url("/figshare/articles/_/9782777/3")
    pinned = await harness.resolved("figshare", "10.6084/m9.figshare.9782777.v2")
    assert pinned.context.resolved_ref == "9782777.v2"
    assert "no version 9" in await harness.failed(
        "figshare", "10.6084/m9.figshare.9782777.v9", FailureReason.REF_NOT_FOUND
    )


async def test_dataverse_dataset_version(harness: Harness, fake: FakeProviders) -> None:
    event = await harness.resolved("dataverse", "10.7910/DVN/TJCLKP")
    assert event.context.resolved_ref == "3035124.v3.1"
    assert event.context.repo_url == fake.url(
        "/dataset.xhtml?persistentId=doi%3A10.7910%2FDVN%2FTJCLKP"
    )


async def test_dataverse_doi_on_an_unknown_installation_is_refused(fake: FakeProviders) -> None:
    harness = Harness(make_settings(fake, dataverse_hosts=["dataverse.harvard.edu"]))
    message = await harness.failed("dataverse", "10.7910/DVN/TJCLKP", FailureReason.INVALID_SPEC)
    assert "not a known Dataverse installation" in message
    assert not fake.requests_to("/api/datasets")


# --- HydroShare, CKAN, Software Heritage ---


@pytest.mark.parametrize(
    "spec", [HS_ID, f"https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F{HS_ID}%2F"]
)
async def test_hydroshare_resource_version_is_its_modification_time(
    harness: Harness, fake: FakeProviders, spec: str
) -> None:
    event = await harness.resolved("hydroshare", spec)
    assert event.context.resolved_ref == f"{HS_ID}.v1569424898"
    assert event.context.repo_url == fake.url(f"/hydroshare/resource/{HS_ID}")


async def test_hydroshare_missing_resource(harness: Harness) -> None:
    await harness.failed("hydroshare", "f" * 32, FailureReason.REF_NOT_FOUND)


async def test_ckan_dataset_on_a_local_site(fake: FakeProviders) -> None:
    harness = Harness(make_settings(fake, profile=Profile.LOCAL))
    url = fake.url("/ckan/dataset/sample-dataset-1")
    spec = url.replace(":", "%3A").replace("/", "%2F")
    event = await harness.resolved("ckan", spec)
    assert (event.context.resolved_ref, event.context.repo_url) == (
        "sample-dataset-1.v1682942400",
        url,
    )
    assert re.fullmatch(r".*:sample-dataset-1\.v1682942400", event.image)
    pinned = await harness.resolved("ckan", spec + "%2Fhistory%2Fact-42")
    assert pinned.context.resolved_ref == "sample-dataset-1.act-42"
    await harness.failed("ckan", spec.replace("sample", "other"), FailureReason.REF_NOT_FOUND)


async def test_ckan_on_loopback_is_refused_in_production(
    harness: Harness, fake: FakeProviders
) -> None:
    spec = fake.url("/ckan/dataset/sample-dataset-1").replace(":", "%3A").replace("/", "%2F")
    assert "internal address" in await harness.failed("ckan", spec, FailureReason.INVALID_SPEC)
    assert not fake.requests_to("/ckan/")


async def test_software_heritage_identifiers(harness: Harness, fake: FakeProviders) -> None:
    rev = await harness.resolved("swhid", "swh:1:rev:" + "c" * 40)
    assert (rev.context.repo_url, rev.context.resolved_ref) == ("swh:1:rev:" + "c" * 40, "c" * 40)
    with_origin = await harness.resolved("swhid", "swh:1:dir:" + "d" * 40 + ";origin=https://x")
    assert with_origin.context.repo_url == "swh:1:dir:" + "d" * 40
    await harness.failed("swhid", "swh:1:rev:" + "e" * 40, FailureReason.REF_NOT_FOUND)
    await harness.failed("swhid", "swh:1:cnt:" + "e" * 40, FailureReason.INVALID_SPEC)
    fake.rate_limited.add("swh")
    message = await harness.failed("swhid", "swh:1:dir:" + "f" * 40, FailureReason.REPO_UNREACHABLE)
    assert "try again in 1 minutes" in message


# --- Operator policy ---


async def test_banned_allowed_and_high_quota_specs(fake: FakeProviders) -> None:
    harness = Harness(
        make_settings(
            fake,
            banned_specs=["gh/evil-org/.*"],
            high_quota_specs=["gh/owner/.*"],
            per_repo_quota=10,
            per_repo_quota_higher=100,
        )
    )
    message = await harness.failed("gh", "Evil-Org/thing/main", FailureReason.BANNED)
    assert "banned" in message
    await harness.failed("gh", "%45vil-org/thing/main", FailureReason.BANNED)
    assert not fake.requests_to("/github/")
    assert (await harness.resolved("gh", "owner/repo/main")).context.repo_config.quota == 100
    allow = Harness(make_settings(fake, allowed_specs=["gh/owner/repo/.*"], per_repo_quota=10))
    assert (await allow.resolved("gh", "OWNER/repo/main")).context.repo_config.quota == 10
    await allow.failed("gl", "group%2Fsub%2Fproject/HEAD", FailureReason.BANNED)
