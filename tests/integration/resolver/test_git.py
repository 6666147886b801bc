"""The git provider against real repositories served over file://, git:// and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bindery.events import FailureReason
from bindery.resolver.errors import ResolveError
from bindery.resolver.git import resolve_commit
from bindery.settings import Profile
from tests.support.eventually import eventually
from tests.support.gitrepo import commit, git, make_repo

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("served")
    repo = root / "project"
    older = make_repo(repo, {"README.md": "zero"})
    first = commit(repo, {"README.md": "one"}, "first")
    git(repo, "tag", "light")
    git(repo, "tag", "-a", "v1", "-m", "release 1")
    git(repo, "checkout", "-q", "-b", "feature")
    second = commit(repo, {"README.md": "two"}, "second")
    git(repo, "checkout", "-q", "main")
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(repo), str(root / "project.git")], check=True
    )
    (root / "project.git" / "git-daemon-export-ok").touch()
    return {
        "root": str(root),
        "first": first,
        "second": second,
        "older": older,
        "tag_object": git(repo, "rev-parse", "v1"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.asynccontextmanager
async def serving(command: list[str], port: int, cwd: Path | None = None) -> AsyncIterator[None]:
    """Run a server on `port` for the duration; ready once the port takes connections."""
    proc = await asyncio.to_thread(subprocess.Popen, command, cwd=cwd)
    try:
        await eventually(
            lambda: asyncio.to_thread(listening, port), within=30, what=f"{command[0]} listening"
        )
        yield
    finally:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="module")
async def git_daemon(served: dict[str, str]) -> AsyncIterator[str]:
    port = free_port()
    command = [
        "git",
        "daemon",
        "--listen=127.0.0.1",
        f"--port={port}",
        f"--base-path={served['root']}",
        "--reuseaddr",
        served["root"],
    ]
    async with serving(command, port):
        yield f"git://127.0.0.1:{port}/project.git"


@pytest.fixture(scope="module")
async def http_git(served: dict[str, str]) -> AsyncIterator[str]:
    """`git http-backend` behind Python's CGI-capable server, like a real smart-HTTP host."""
    port = free_port()
    command = [sys.executable, "-m", "tests.support.githttp", served["root"], str(port)]
    async with serving(command, port, cwd=REPO):
        yield f"http://127.0.0.1:{port}/project.git"


async def resolve(url: str, ref: str) -> str:
    return await resolve_commit(url, ref, Profile.LOCAL, 10)


@pytest.mark.parametrize("transport", ["file", "git", "http"])
async def test_branches_tags_and_head_resolve_on_every_transport(
    transport: str, served: dict[str, str], git_daemon: str, http_git: str
) -> None:
    url = {"file": f"file://{served['root']}/project", "git": git_daemon, "http": http_git}[
        transport
    ]
    assert await resolve(url, "HEAD") == served["first"]
    assert await resolve(url, "main") == served["first"]
    assert await resolve(url, "feature") == served["second"]
    assert await resolve(url, "light") == served["first"]
    assert await resolve(url, "v1") == served["first"], "annotated tags resolve to their commit"
    assert await resolve(url, served["second"]) == served["second"]
    assert await resolve(url, served["second"][:7]) == served["second"], "short SHA of a tip"
    assert await resolve(url, served["older"][:10]) == served["older"], "short SHA in history"
    assert await resolve(url, served["older"]) == served["older"]


async def test_missing_ref_names_the_ref(served: dict[str, str]) -> None:
    with pytest.raises(ResolveError, match="nope") as info:
        await resolve(f"file://{served['root']}/project", "nope")
    assert info.value.reason is FailureReason.REF_NOT_FOUND


async def test_unreachable_repository_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ResolveError) as info:
        await resolve(f"file://{tmp_path}/missing", "main")
    assert info.value.reason is FailureReason.REPO_UNREACHABLE


async def test_a_silent_server_times_out_instead_of_hanging() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ResolveError, match="did not answer") as info:
            await asyncio.wait_for(
                resolve_commit(f"git://127.0.0.1:{port}/x", "main", Profile.LOCAL, 1), 10
            )
    assert info.value.reason is FailureReason.REPO_UNREACHABLE


async def test_unknown_short_sha_is_ref_not_found(served: dict[str, str]) -> None:
    with pytest.raises(ResolveError, match="deadbeef") as info:
        await resolve(f"file://{served['root']}/project", "deadbeef")
    assert info.value.reason is FailureReason.REF_NOT_FOUND
