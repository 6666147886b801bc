import pytest

from bindery.events import FailureReason
from bindery.resolver.git import git_command, pick_commit
from bindery.resolver.spec import BadSpec, parse_spec
from bindery.settings import Profile

LOCAL, PROD = Profile.LOCAL, Profile.PRODUCTION


def test_git_spec_is_url_escaped_url_then_ref() -> None:
    ref = parse_spec("git", "https%3A%2F%2F1.1.1.1%2Fo%2Fr.git/v1.0", PROD)
    assert (ref.repo_url, ref.ref) == ("https://1.1.1.1/o/r.git", "v1.0")


def test_gh_spec() -> None:
    ref = parse_spec("gh", "binder-examples/requirements/main", PROD)
    assert (ref.repo_url, ref.ref) == ("https://github.com/binder-examples/requirements", "main")


@pytest.mark.parametrize(
    ("provider", "spec", "profile", "why"),
    [
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/--upload-pack=touch%20x", PROD, "cannot start with '-'"),
        ("git", "--upload-pack%3Dx/main", PROD, "cannot start with '-'"),
        ("git", "ext%3A%3Ash%20-c%20touch%20x/main", PROD, "whitespace"),
        ("git", "ext%3A%3Ash%09-c%09touch%09x/main", PROD, "control"),
        ("git", "ext%3A%3Aevil/main", PROD, "scheme"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/..%2F..%2Fx", PROD, "'..'"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/a%0Ab", PROD, "control"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/", PROD, "No ref"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr", PROD, "ref is missing"),
        ("git", "file%3A%2F%2F%2Ftmp%2Fr/main", PROD, "local Bindery"),
        ("git", "https%3A%2F%2F127.0.0.1%2Fr/main", PROD, "internal address"),
        ("git", "https%3A%2F%2F169.254.169.254%2Fr/main", PROD, "internal address"),
        ("git", "https%3A%2F%2F10.1.2.3%2Fr/main", LOCAL, "internal address"),
        ("git", "https%3A%2F%2F%5B%3A%3Affff%3A10.0.0.1%5D%2Fr/main", PROD, "internal address"),
        ("git", "x" * 5000, PROD, "longer than"),
        ("gh", "../../x/main", PROD, "GitHub"),
        ("svn", "x/y", PROD, "Unknown repository provider"),
    ],
)
def test_hostile_specs_are_refused(provider: str, spec: str, profile: Profile, why: str) -> None:
    with pytest.raises(BadSpec, match=why) as info:
        parse_spec(provider, spec, profile)
    assert info.value.reason in {FailureReason.INVALID_SPEC, FailureReason.REPO_UNREACHABLE}


def test_local_profile_accepts_loopback_and_file_urls() -> None:
    assert parse_spec("git", "http%3A%2F%2F127.0.0.1%3A9%2Fr/main", LOCAL).ref == "main"
    assert parse_spec("git", "file%3A%2F%2F%2Ftmp%2Fr/main", LOCAL).repo_url == "file:///tmp/r"


def test_git_gets_double_dash_before_the_url() -> None:
    command = git_command("--upload-pack=x", PROD)
    assert command[command.index("--upload-pack=x") - 1] == "--"
    assert "protocol.ext.allow=never" in command


LISTING = "\n".join(
    [
        f"{'a' * 40}\tHEAD",
        f"{'b' * 40}\trefs/heads/main",
        f"{'c' * 40}\trefs/tags/v1",
        f"{'d' * 40}\trefs/tags/v1^{{}}",
        f"{'e' * 40}\trefs/tags/light",
    ]
)


@pytest.mark.parametrize(
    ("ref", "sha"),
    [
        ("HEAD", "a"),
        ("main", "b"),
        ("v1", "d"),
        ("light", "e"),
        ("refs/heads/main", "b"),
        ("x", None),
    ],
)
def test_pick_commit_peels_annotated_tags(ref: str, sha: str | None) -> None:
    assert pick_commit(LISTING, ref) == (sha * 40 if sha else None)
