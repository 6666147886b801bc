"""The shared provider catalogue, the operator's spec policy, and the lookup cache."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from bindery.events import FailureReason, RepoConfig
from bindery.providers import PROVIDERS, detect, spec_syntax_error
from bindery.resolver.cache import LookupCache
from bindery.resolver.errors import ResolveError
from bindery.resolver.policy import SpecPolicy
from bindery.resolver.settings import ResolverSettings, SpecConfig
from tests.support.fakeproviders import BINDERHUB_PROVIDERS


def test_catalogue_lists_every_binderhub_provider_with_labels_and_patterns() -> None:
    assert set(PROVIDERS) == BINDERHUB_PROVIDERS
    for provider in PROVIDERS.values():
        config = provider.display_config()
        assert config["id"] == provider.id and config["displayName"]
        assert config["repo"]["label"] and config["spec"]["validateRegex"]
        assert config["labels"]["text"] == config["repo"]["label"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://github.com/binder-examples/requirements",
            ("gh", "binder-examples/requirements/HEAD"),
        ),
        ("https://github.com/o/r/tree/dev/docs", ("gh", "o/r/dev")),
        ("https://github.com/o/r/blob/v1/a/b.ipynb", ("gh", "o/r/v1")),
        ("https://gitlab.com/g/sub/proj/-/tree/dev", ("gl", "g%2Fsub%2Fproj/dev")),
        ("https://gist.github.com/u/abc123", ("gist", "u/abc123/HEAD")),
        ("https://doi.org/10.5281/zenodo.3242074", ("zenodo", "10.5281/zenodo.3242074")),
        ("10.6084/m9.figshare.9782777.v1", ("figshare", "10.6084/m9.figshare.9782777.v1")),
        ("doi:10.7910/DVN/TJCLKP", ("dataverse", "10.7910/DVN/TJCLKP")),
        ("https://demo.ckan.org/dataset/x", ("ckan", "https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fx")),
        ("swh:1:dir:" + "a" * 40, ("swhid", "swh:1:dir:" + "a" * 40)),
        ("https://git.example.org/r.git", ("git", "https%3A%2F%2Fgit.example.org%2Fr.git/HEAD")),
        ("just words", None),
    ],
)
def test_pasted_urls_are_detected_and_pass_the_syntax_check(
    url: str, expected: tuple[str, str] | None
) -> None:
    assert detect(url) == expected
    if expected is not None:
        assert spec_syntax_error(*expected) is None


@pytest.mark.parametrize(
    ("provider", "spec", "words"),
    [
        ("svn", "x", "unknown provider"),
        ("gh", "onlyowner", "not a GitHub spec"),
        ("zenodo", "zenodo.1", "not a Zenodo DOI spec"),
        ("swhid", "swh:1:cnt:" + "a" * 40, "not a Software Heritage spec"),
    ],
)
def test_syntax_check_explains_what_is_wrong(provider: str, spec: str, words: str) -> None:
    assert words in (spec_syntax_error(provider, spec) or "")


def policy(**values: object) -> SpecPolicy:
    return SpecPolicy.from_settings(ResolverSettings(**values))  # type: ignore[arg-type]


def test_bans_match_any_letter_case_and_encoding() -> None:
    bans = policy(banned_specs=["gh/ds-100/textbook"])
    for spec in ["DS-100/Textbook/main", "ds-100/textbook/main", "%44S-100/textbook/HEAD"]:
        with pytest.raises(ResolveError, match="banned") as info:
            bans.check_allowed("gh", spec)
        assert info.value.reason is FailureReason.BANNED
    bans.check_allowed("gh", "ds-101/textbook/main")
    bans.check_allowed("gl", "ds-100%2Ftextbook/main")


def test_allow_list_and_per_spec_config() -> None:
    rules = policy(
        allowed_specs=["gh/course/"],
        high_quota_specs=["gh/course/big", "gh/course/open"],
        per_repo_quota=5,
        per_repo_quota_higher=50,
        spec_config=[
            SpecConfig(pattern="gh/course/big", config=RepoConfig(quota=80)),
            SpecConfig.model_validate({"pattern": "gh/course/open", "config": {"quota": None}}),
        ],
    )
    with pytest.raises(ResolveError):
        rules.check_allowed("gh", "other/repo/main")
    rules.check_allowed("gh", "Course/small/main")
    assert rules.repo_config("gh", "course/small/main") == RepoConfig(quota=5)
    assert rules.repo_config("gh", "course/BIG/main") == RepoConfig(quota=80)
    assert rules.repo_config("gh", "course/open/main") == RepoConfig(), "the scheduler's default"
    assert policy().repo_config("gh", "any/repo/main") == RepoConfig()


def test_a_per_repository_setting_that_nothing_applies_stops_the_resolver_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BINDERY_SPEC_CONFIG", '[{"pattern": "gh/x/.*", "config": {"note": "x"}}]')
    with pytest.raises(ValidationError, match=r"config\.note\s+Extra inputs are not permitted"):
        ResolverSettings()
    for bad in ('{"quota": 0}', '{"quota": "many"}'):
        monkeypatch.setenv("BINDERY_SPEC_CONFIG", f'[{{"pattern": "gh/x/.*", "config": {bad}}}]')
        with pytest.raises(ValidationError, match=r"config\.quota"):
            ResolverSettings()
    monkeypatch.delenv("BINDERY_SPEC_CONFIG")
    monkeypatch.setenv("BINDERY_PER_REPO_QUOTA", "0")
    with pytest.raises(ValidationError, match="per_repo_quota"):
        ResolverSettings()


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_cache_keeps_successes_for_their_ttl_and_failures_briefly() -> None:
    clock = Clock()
    cache: LookupCache[str] = LookupCache(10, negative_ttl=5, clock=clock)
    calls: list[str] = []

    async def ok() -> str:
        calls.append("ok")
        return "sha"

    async def missing() -> str:
        calls.append("missing")
        raise ResolveError("no such ref", FailureReason.REF_NOT_FOUND)

    assert await cache.get("a", ok, lambda _: 60) == "sha"
    clock.now = 59
    assert await cache.get("a", ok, lambda _: 60) == "sha"
    clock.now = 61
    assert await cache.get("a", ok, lambda _: 60) == "sha"
    assert calls == ["ok", "ok"]
    for _ in range(2):
        with pytest.raises(ResolveError):
            await cache.get("b", missing, lambda _: 60)
    clock.now = 67
    with pytest.raises(ResolveError):
        await cache.get("b", missing, lambda _: 60)
    assert calls == ["ok", "ok", "missing", "missing"]


async def test_concurrent_lookups_of_one_key_share_one_call() -> None:
    cache: LookupCache[str] = LookupCache(10, negative_ttl=5)
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "sha"

    waiters = [asyncio.create_task(cache.get("k", slow, lambda _: 0)) for _ in range(5)]
    # The other four were scheduled before the first lookup signalled, so they have joined it.
    await started.wait()
    release.set()
    assert await asyncio.gather(*waiters) == ["sha"] * 5
    assert calls == 1


def test_cache_is_bounded() -> None:
    cache: LookupCache[str] = LookupCache(2, negative_ttl=5)
    for key in "abc":
        cache._store(key, key, 60)
    assert list(cache._entries) == ["b", "c"]
