"""BinderHub's session variables, as its builder and spawner set them."""

from __future__ import annotations

import pytest

from bindery.providers import binder_env

SHA = "0123456789abcdef0123456789abcdef01234567"
HOST = "https://binder.example/"


@pytest.mark.parametrize(
    "provider, spec, repo_url, ref_url, persistent",
    [
        (
            "gh",
            "org/repo/HEAD",
            "https://github.com/org/repo",
            f"https://github.com/org/repo/tree/{SHA}",
            f"v2/gh/org/repo/{SHA}",
        ),
        (
            "gl",
            "group%2Fproject/main",
            "https://gitlab.com/group/project.git",
            f"https://gitlab.com/group/project/tree/{SHA}",
            f"v2/gl/group%2Fproject/{SHA}",
        ),
        (
            "gist",
            "user/abc/HEAD",
            "https://gist.github.com/user/abc.git",
            f"https://gist.github.com/user/abc/{SHA}",
            f"v2/gist/user/abc/{SHA}",
        ),
        (
            "git",
            "file%3A%2F%2F%2Fsrv%2Fr/main",
            "file:///srv/r",
            "file:///srv/r",
            f"v2/git/file%3A%2F%2F%2Fsrv%2Fr/{SHA}",
        ),
        (
            "zenodo",
            "10.5281/zenodo.123",
            "https://zenodo.org/records/123",
            "https://zenodo.org/records/123",
            "v2/zenodo/10.5281/zenodo.123",
        ),
    ],
)
def test_binder_env(provider: str, spec: str, repo_url: str, ref_url: str, persistent: str) -> None:
    resolved = SHA if provider != "zenodo" else "123"
    assert binder_env(HOST, provider, spec, repo_url, resolved) == {
        "BINDER_LAUNCH_HOST": HOST,
        "BINDER_REPO_URL": repo_url,
        "BINDER_REF_URL": ref_url,
        "BINDER_REQUEST": f"v2/{provider}/{spec}",
        "BINDER_PERSISTENT_REQUEST": persistent,
    }
