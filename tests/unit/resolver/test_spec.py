"""Spec parsing refuses hostile input and maps every provider's spec to what to look up."""

import ipaddress

import pytest

from bindery.events import FailureReason
from bindery.resolver.errors import ResolveError
from bindery.resolver.git import fetch_command, git_command, pick_commit
from bindery.resolver.hosts import HostPolicy
from bindery.resolver.resolve import image_tag
from bindery.resolver.spec import (
    CkanTarget,
    DoiTarget,
    GistTarget,
    GitHubTarget,
    GitLabTarget,
    GitTarget,
    HydroshareTarget,
    SwhidTarget,
    parse_spec,
)
from bindery.settings import Profile

LOCAL, PROD = Profile.LOCAL, Profile.PRODUCTION


@pytest.mark.parametrize(
    ("provider", "spec", "target"),
    [
        (
            "git",
            "https%3A%2F%2Fexample.org%2Fo%2Fr.git/v1.0",
            GitTarget("https://example.org/o/r.git", "v1.0"),
        ),
        ("git", "https%3A%2F%2Fexample.org%2Fr", GitTarget("https://example.org/r", "HEAD")),
        (
            "git",
            "git%40example.org%3Ao%2Fr.git/main",
            GitTarget("ssh://git@example.org/o/r.git", "main"),
        ),
        (
            "gh",
            "binder-examples/requirements/main",
            GitHubTarget("binder-examples", "requirements", "main"),
        ),
        ("gh", "o/r.git/feature/x", GitHubTarget("o", "r", "feature/x")),
        ("gh", "o/r", GitHubTarget("o", "r", "HEAD")),
        ("gist", "u/ABC123", GistTarget("u", "abc123", "HEAD")),
        ("gl", "group%2Fsub%2Fproj/dev", GitLabTarget("group/sub/proj", "dev")),
        ("zenodo", "10.5281/zenodo.3242074", DoiTarget("zenodo", "10.5281/zenodo.3242074")),
        (
            "figshare",
            "doi:10.6084/m9.figshare.9782777.v1",
            DoiTarget("figshare", "10.6084/m9.figshare.9782777.v1"),
        ),
        (
            "dataverse",
            "https%3A%2F%2Fdoi.org%2F10.7910%2FDVN%2FTJCLKP",
            DoiTarget("dataverse", "10.7910/DVN/TJCLKP"),
        ),
        (
            "hydroshare",
            "b8f6eae9d89241cf8b5904033460af61",
            HydroshareTarget("b8f6eae9d89241cf8b5904033460af61"),
        ),
        ("swhid", "swh:1:rev:" + "a" * 40 + ";origin=x", SwhidTarget("rev", "a" * 40)),
        (
            "ckan",
            "https%3A%2F%2Fdemo.ckan.org%2Fsub%2Fdataset%2Fsample-1%3Factivity_id%3Dabc",
            CkanTarget(
                "https://demo.ckan.org/sub/dataset/sample-1/history/abc",
                "https://demo.ckan.org/sub/api/3/action",
                "sample-1",
                "abc",
                "demo.ckan.org",
            ),
        ),
    ],
)
def test_every_provider_spec_parses(provider: str, spec: str, target: object) -> None:
    assert parse_spec(provider, spec, PROD) == target


@pytest.mark.parametrize(
    ("provider", "spec", "profile", "why"),
    [
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/--upload-pack=touch%20x", PROD, "start with"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/--upload-pack=x", PROD, "cannot start with '-'"),
        ("git", "--upload-pack%3Dx/main", PROD, "cannot start with '-'"),
        ("git", "ssh%3A%2F%2F-oProxyCommand%3Dx%2Fr/main", PROD, "no valid host"),
        ("git", "ssh%3A%2F%2F-oProxyCommand%3Dx%40h%2Fr/main", PROD, "user name"),
        ("git", "ext%3A%3Ash%20-c%20touch%20x/main", PROD, "whitespace"),
        ("git", "ext%3A%3Aevil/main", PROD, "scheme"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/..%2F..%2Fx", PROD, "'..'"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/%252e%252e", PROD, "not a valid git"),
        ("git", "https%3A%2F%2F1.1.1.1%2Fr/a%0Ab", PROD, "control"),
        ("git", "file%3A%2F%2F%2Ftmp%2Fr/main", PROD, "local Bindery"),
        ("git", "https%3A%2F%2Fexample.org%3Abad%2Fr/main", PROD, "invalid port"),
        ("git", "x" * 5000, PROD, "longer than"),
        ("gh", "../../x/main", PROD, "Invalid GitHub owner"),
        ("gh", "o/r/" + "a" * 300, PROD, "longer than 255"),
        ("gist", "u/not-hex", PROD, "hexadecimal"),
        ("gist", "u/abc/feature", PROD, "HEAD or a full"),
        ("gl", "project/main", PROD, "group%2Fproject"),
        ("gl", "g%2F..%2Fadmin/main", PROD, "Invalid GitLab"),
        ("zenodo", "zenodo.3242074", PROD, "not a DOI"),
        ("zenodo", "10.5281/..%2F..%2Fadmin", PROD, "path segments"),
        ("hydroshare", "nothing-here", PROD, "resource id"),
        ("ckan", "https%3A%2F%2Fdemo.ckan.org%2Fgroup%2Fx", PROD, "/dataset/"),
        ("ckan", "ftp%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fx", PROD, "url-escaped dataset URL"),
        ("swhid", "swh:1:cnt:" + "a" * 40, PROD, "other object types"),
        ("svn", "x/y", PROD, "Unknown repository provider"),
    ],
)
def test_hostile_specs_are_refused(provider: str, spec: str, profile: Profile, why: str) -> None:
    with pytest.raises(ResolveError, match=why) as info:
        parse_spec(provider, spec, profile)
    assert info.value.reason in {FailureReason.INVALID_SPEC, FailureReason.REPO_UNREACHABLE}


def test_local_profile_accepts_file_urls() -> None:
    assert parse_spec("git", "file%3A%2F%2F%2Ftmp%2Fr/main", LOCAL) == GitTarget(
        "file:///tmp/r", "main"
    )


@pytest.mark.parametrize(
    ("address", "profile", "allowed"),
    [
        ("8.8.8.8", PROD, True),
        ("127.0.0.1", PROD, False),
        ("127.0.0.1", LOCAL, True),
        ("::1", PROD, False),
        ("::ffff:127.0.0.1", PROD, False),
        ("::ffff:8.8.8.8", PROD, True),
        ("169.254.169.254", LOCAL, False),
        ("10.1.2.3", LOCAL, False),
        ("192.168.1.1", PROD, False),
        ("100.64.0.1", PROD, False),
        ("fd00::1", PROD, False),
        ("0.0.0.0", PROD, False),
        ("224.0.0.1", PROD, False),
    ],
)
def test_host_policy_refuses_internal_addresses(
    address: str, profile: Profile, allowed: bool
) -> None:
    assert HostPolicy.build(profile, []).allows(ipaddress.ip_address(address)) is allowed


def test_trusted_networks_open_one_internal_range() -> None:
    policy = HostPolicy.build(PROD, ["10.0.0.0/24"])
    assert policy.allows(ipaddress.ip_address("10.0.0.5"))
    assert not policy.allows(ipaddress.ip_address("10.0.1.5"))


async def test_internal_hosts_are_refused_before_any_connection() -> None:
    policy = HostPolicy.build(PROD, [])
    for host in ["127.0.0.1", "[::1]", "169.254.169.254", "10.0.0.1", "::ffff:10.0.0.1"]:
        with pytest.raises(ResolveError, match="internal address"):
            await policy.check_host(host)


def test_git_gets_double_dash_before_the_url() -> None:
    for command in (
        git_command("--upload-pack=x", PROD),
        fetch_command("/s", "--upload-pack=x", PROD),
    ):
        assert command[command.index("--upload-pack=x") - 1] == "--"
        assert "protocol.ext.allow=never" in command
        assert "protocol.file.allow=never" in command


@pytest.mark.parametrize(
    ("resolved", "tag"),
    [("a" * 40, "a" * 40), ("9782777.v2", "9782777.v2"), ("-x.v1", "v-x.v1"), ("a/b", "a-b")],
)
def test_image_tags_are_valid_oci_tags(resolved: str, tag: str) -> None:
    assert image_tag(resolved) == tag


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
        ("bbbbbbb", "b"),
        ("x", None),
    ],
)
def test_pick_commit_peels_annotated_tags(ref: str, sha: str | None) -> None:
    assert pick_commit(LISTING, ref) == (sha * 40 if sha else None)
