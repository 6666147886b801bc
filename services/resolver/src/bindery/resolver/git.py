"""Resolve a git ref to a full commit SHA with `git ls-remote`.

In: a checked repository URL and ref. Out: the 40-hex commit, or `BadSpec` with
REF_NOT_FOUND / REPO_UNREACHABLE. `--` always precedes the positional arguments, and the `ext::`
transport is disabled, so nothing a stranger typed is read as an option or a command.
"""

from __future__ import annotations

import asyncio
import os
import re

from bindery.events import FailureReason
from bindery.resolver.spec import BadSpec
from bindery.settings import Profile

_SHA = re.compile(r"^[0-9a-f]{40}$")


def git_command(repo_url: str, profile: Profile) -> list[str]:
    file_allowed = "always" if profile is Profile.LOCAL else "never"
    return [
        "git",
        "-c",
        "protocol.ext.allow=never",
        "-c",
        f"protocol.file.allow={file_allowed}",
        "ls-remote",
        "--",
        repo_url,
    ]


def pick_commit(listing: str, ref: str) -> str | None:
    """Choose the commit `ref` names in `git ls-remote` output (peeled tags win)."""
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if _SHA.match(sha):
            refs[name] = sha
    candidates = [ref] if ref == "HEAD" or ref.startswith("refs/") else []
    candidates += [f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"]
    return next((refs[name] for name in candidates if name in refs), None)


async def resolve_commit(repo_url: str, ref: str, profile: Profile, limit_seconds: float) -> str:
    if _SHA.match(ref.lower()):
        return ref.lower()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    proc = await asyncio.create_subprocess_exec(
        *git_command(repo_url, profile),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), limit_seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BadSpec(
            f"The repository {repo_url} did not answer within {limit_seconds:.0f} s",
            FailureReason.REPO_UNREACHABLE,
        ) from None
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no detail"]
        raise BadSpec(
            f"Could not read the repository {repo_url}: {detail[0]}",
            FailureReason.REPO_UNREACHABLE,
        )
    commit = pick_commit(stdout.decode(errors="replace"), ref)
    if commit is None:
        raise BadSpec(
            f"Could not resolve ref {ref!r} in {repo_url}: no branch, tag or commit of that name",
            FailureReason.REF_NOT_FOUND,
        )
    return commit
