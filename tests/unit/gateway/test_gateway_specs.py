"""Provider and spec come from the raw path, still percent-encoded; bad paths are refused."""

from __future__ import annotations

import pytest

from bindery.events import MAX_SPEC_LENGTH
from bindery.gateway.specs import InvalidSpec, parse_raw_spec


def test_git_spec_keeps_its_encoded_slashes() -> None:
    raw = "/build/git/https%3A%2F%2Fexample.org%2Fowner%2Frepo.git/main?build_only=true"
    assert parse_raw_spec(raw, "/build/") == (
        "git",
        "https%3A%2F%2Fexample.org%2Fowner%2Frepo.git/main",
    )


def test_gh_spec_and_v2_prefix() -> None:
    assert parse_raw_spec("/v2/gh/owner/repo/HEAD", "/v2/") == ("gh", "owner/repo/HEAD")


def test_ref_with_slashes_stays_whole() -> None:
    assert parse_raw_spec("/build/git/u/feature/x%2Fy", "/build/") == ("git", "u/feature/x%2Fy")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("/build/svn/x/HEAD", "unknown provider"),
        ("/build/", "no provider"),
        ("/build/git", "empty"),
        ("/build/git/", "empty"),
        ("/build/git///", "empty"),
        ("/build/git/" + "a" * (MAX_SPEC_LENGTH + 1), "longer"),
        ("/build/git/https%3A%2F%2Fx%0A/HEAD", "control"),
        ("/build/git/x/HE%00AD", "control"),
        ("/build/git/x/%7F", "control"),
        ("/build/git/x/%FF%FE", "UTF-8"),
        ("/other/git/x/HEAD", "must start"),
    ],
)
def test_malformed_paths_are_refused(raw: str, words: str) -> None:
    with pytest.raises(InvalidSpec, match=words):
        parse_raw_spec(raw, "/build/")


def test_longest_allowed_spec_passes() -> None:
    spec = "a" * (MAX_SPEC_LENGTH - 5) + "/HEAD"
    assert parse_raw_spec("/build/git/" + spec, "/build/") == ("git", spec)
