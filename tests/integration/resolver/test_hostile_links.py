"""Hostile launch links (issue 4) through the real resolver: each ends in a failed launch with a
reason, none starts git with the hostile string, none makes a connection to a refused host.

The table runs through the resolver in the production profile with a `git` on PATH that records
every argv, and with a loopback listener (IPv4 and IPv6) that records every connection; the
provider APIs point at that listener too, so any request the resolver made would show. A subset
goes through the whole started stack, gateway first, in tests/e2e/test_hostile_links.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bindery.events import Event, FailureReason, LaunchFailed, LaunchRequested, RefResolved
from bindery.resolver.resolve import Resolver
from bindery.resolver.settings import ResolverSettings
from bindery.settings import Profile
from tests.support.gitrepo import make_repo

INVALID, BANNED = FailureReason.INVALID_SPEC, FailureReason.BANNED
PORT = "{port}"
X = "https%3A%2F%2Fexample.org%2Fr.git"

# (provider, spec, reason, words in the message). {port} is the recording listener's port.
HOSTILE: list[tuple[str, str, FailureReason, str]] = [
    # option injection in the ref
    ("git", f"{X}/--upload-pack=touch%20%2Ftmp%2Fpwned", INVALID, "cannot start with '-'"),
    ("git", f"{X}/-n", INVALID, "cannot start with '-'"),
    ("gh", "owner/repo/--output=%2Ftmp%2Fx", INVALID, "cannot start with '-'"),
    ("gl", "group%2Fproject/--exec=x", INVALID, "cannot start with '-'"),
    # option injection in the URL
    ("git", "--upload-pack%3Dtouch%2520x/main", INVALID, "cannot start with '-'"),
    ("git", "-oProxyCommand%3Dtouch%2520x/main", INVALID, "cannot start with '-'"),
    ("git", "ssh%3A%2F%2F-oProxyCommand%3Dtouch%2Fr/main", INVALID, "no valid host"),
    ("git", "ssh%3A%2F%2F-oProxyCommand%3Dx%40example.org%2Fr/main", INVALID, "user name"),
    ("gh", "-owner/repo/main", INVALID, "Invalid GitHub owner"),
    # ext:: and other transports
    ("git", "ext%3A%3Ash%20-c%20touch%2520%2Ftmp%2Fpwned/main", INVALID, "whitespace"),
    ("git", "ext%3A%3Ash/main", INVALID, "scheme 'ext'"),
    ("git", "EXT%3A%3Ash/main", INVALID, "scheme 'ext'"),
    ("git", "fd%3A%3A3/main", INVALID, "scheme 'fd'"),
    ("git", "file%3A%2F%2F%2Fetc/main", INVALID, "local Bindery"),
    # plain and percent-encoded traversal
    ("gh", "owner/repo/../../../admin", INVALID, "'..'"),
    ("gh", "owner/repo/..%2F..%2Fadmin", INVALID, "'..'"),
    ("gh", "owner/repo/%2E%2E%2F%2E%2E%2Fadmin", INVALID, "'..'"),
    ("gh", "owner/repo/%252E%252E%252Fadmin", INVALID, "not a valid git"),
    ("gh", "..%2F..%2Fusers/repo/main", INVALID, "Invalid GitHub owner"),
    ("gl", "group%2F..%2F..%2Fadmin/main", INVALID, "Invalid GitLab"),
    ("gist", "user/..%2F..%2Fadmin", INVALID, "hexadecimal"),
    ("zenodo", "10.5281/..%2F..%2Fadmin", INVALID, "path segments"),
    # SSRF: loopback, metadata, private ranges, IPv6 loopback, IPv4-mapped IPv6, tricks
    ("git", f"http%3A%2F%2F127.0.0.1%3A{PORT}%2Fr.git/main", INVALID, "internal address"),
    ("git", "http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data/main", INVALID, "internal address"),
    ("git", "http%3A%2F%2F10.1.2.3%2Fr.git/main", INVALID, "internal address"),
    ("git", "git%3A%2F%2F10.255.0.1%2Fr.git/main", INVALID, "internal address"),
    ("git", f"http%3A%2F%2F%5B%3A%3A1%5D%3A{PORT}%2Fr.git/main", INVALID, "internal address"),
    (
        "git",
        f"http%3A%2F%2F%5B%3A%3Affff%3A127.0.0.1%5D%3A{PORT}%2Fr.git/main",
        INVALID,
        "internal address",
    ),
    ("git", f"http%3A%2F%2Flocalhost%3A{PORT}%2Fr.git/main", INVALID, "internal address"),
    ("git", f"http%3A%2F%2F0.0.0.0%3A{PORT}%2Fr.git/main", INVALID, "internal address"),
    ("git", f"http%3A%2F%2F2130706433%3A{PORT}%2Fr.git/main", INVALID, "internal address"),
    ("git", f"ssh%3A%2F%2Fgit%40127.0.0.1%3A{PORT}%2Fr.git/main", INVALID, "internal address"),
    ("ckan", f"http%3A%2F%2F127.0.0.1%3A{PORT}%2Fdataset%2Fx", INVALID, "internal address"),
    ("ckan", "http%3A%2F%2F169.254.169.254%2Fdataset%2Fx", INVALID, "internal address"),
    # overlong specs (a whole link over 4096 characters never becomes an event: the gateway
    # answers 400, see THROUGH_THE_STACK, and the event contract refuses it)
    ("gh", "a" * 101 + "/repo/main", INVALID, "Invalid GitHub owner"),
    ("gh", "owner/repo/" + "a" * 300, INVALID, "longer than 255"),
    # newline and header injection
    ("git", f"{X}/main%0Aother", INVALID, "whitespace or control"),
    ("gh", "owner/repo/main%0D%0AX-Injected:%201", INVALID, "whitespace or control"),
    ("git", "https%3A%2F%2Fexample.org%0A%2Fr.git/main", INVALID, "whitespace or control"),
    # a banned spec in other letter case (and percent-encoded)
    ("gh", "EVIL-ORG/Repo/main", BANNED, "banned"),
    ("gh", "%45vil-Org/repo/main", BANNED, "banned"),
]


@dataclass
class Listener:
    """Accepts TCP on 127.0.0.1 and [::1] (same port) and records every connection."""

    port: int = 0
    connections: list[Any] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)

    async def start(self) -> None:
        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.append(writer.get_extra_info("peername"))
            writer.close()

        first = await asyncio.start_server(record, "127.0.0.1", 0)
        self.port = first.sockets[0].getsockname()[1]
        self.servers.append(first)
        if socket.has_ipv6:
            # Without an IPv6 loopback the IPv6 cases are still refused before connecting.
            with contextlib.suppress(OSError):
                self.servers.append(await asyncio.start_server(record, "::1", self.port))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    server = Listener()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def git_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A `git` first on PATH that logs its argv (one JSON list a line) and runs the real git."""
    shim_dir, log = tmp_path / "shim", tmp_path / "git-argv.log"
    shim_dir.mkdir()
    shim = shim_dir / "git"
    shim.write_text(
        "#!/usr/bin/python3\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "os.execv('/usr/bin/git', ['git', *sys.argv[1:]])\n"
    )
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    log.touch()
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    yield log


class Images:
    async def image_exists(self, image: str) -> bool:
        return False


def make_resolver(listener: Listener, profile: Profile, events: list[Event]) -> Resolver:
    api = f"http://127.0.0.1:{listener.port}"
    settings = ResolverSettings(
        profile=profile,
        banned_specs=["gh/evil-org/.*"],
        github_api_url=api,
        gitlab_url=api,
        doi_resolver_url=api,
        zenodo_url=api,
        figshare_api_url=api,
        hydroshare_url=api,
        swh_api_url=api,
        http_timeout=2,
        git_timeout=5,
    )

    async def publish(event: Event) -> None:
        events.append(event)

    return Resolver.create(settings, Images(), publish)


def git_argvs(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_the_table_is_large_enough() -> None:
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize(("provider", "spec", "reason", "words"), HOSTILE)
async def test_hostile_link_fails_without_git_or_connections(
    listener: Listener,
    git_calls: Path,
    provider: str,
    spec: str,
    reason: FailureReason,
    words: str,
) -> None:
    events: list[Event] = []
    resolver = make_resolver(listener, Profile.PRODUCTION, events)
    try:
        spec = spec.replace(PORT, str(listener.port))
        await resolver.on_launch_requested(
            LaunchRequested(launch_id="hostile", provider=provider, spec=spec)
        )
    finally:
        await resolver.close()
    [event] = events
    assert isinstance(event, LaunchFailed), event
    assert event.reason is reason, event.message
    assert words in event.message
    assert git_argvs(git_calls) == [], "no git process may start for a hostile link"
    assert listener.connections == [], "no connection may reach a refused host"


async def test_the_recorders_see_what_a_legitimate_link_does(
    listener: Listener, git_calls: Path, tmp_path: Path
) -> None:
    """Control: in the local profile a real repository runs git (with `--` before the URL)
    and a loopback CKAN site gets a connection, so the silence above means something."""
    repo = tmp_path / "repo"
    commit = make_repo(repo, {"README.md": "hi"})
    events: list[Event] = []
    resolver = make_resolver(listener, Profile.LOCAL, events)
    try:
        url = f"file://{repo}"
        await resolver.on_launch_requested(
            LaunchRequested(launch_id="ok", provider="git", spec=f"{url.replace('/', '%2F')}/main")
        )
        await resolver.on_launch_requested(
            LaunchRequested(
                launch_id="ckan",
                provider="ckan",
                spec=f"http%3A%2F%2F127.0.0.1%3A{listener.port}%2Fdataset%2Fx",
            )
        )
    finally:
        await resolver.close()
    resolved = events[0]
    assert isinstance(resolved, RefResolved), resolved
    assert resolved.context.resolved_ref == commit
    [argv] = git_argvs(git_calls)
    assert argv[argv.index(url) - 1] == "--"
    assert listener.connections, "the listener records connections"
