"""Resolve a git ref to a full commit SHA with `git ls-remote` (and, for a short SHA that is no
branch tip, a tree-less fetch into a scratch repository).

In: a checked repository URL and a checked ref. Out: the 40-hex commit, or `ResolveError` with
REF_NOT_FOUND / REPO_UNREACHABLE. `--` always precedes the URL, the ext transport is disabled
(file only in the local profile), a short SHA reaches git only after `--end-of-options` and
only as 7-39 hex digits, so nothing a stranger typed is read as an option or a command.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile

from bindery.events import FailureReason
from bindery.resolver.errors import ResolveError
from bindery.settings import Profile

_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")


def _protocol_options(profile: Profile) -> list[str]:
    file_allowed = "always" if profile is Profile.LOCAL else "never"
    return ["-c", "protocol.ext.allow=never", "-c", f"protocol.file.allow={file_allowed}"]


def git_command(repo_url: str, profile: Profile) -> list[str]:
    return ["git", *_protocol_options(profile), "ls-remote", "--", repo_url]


def fetch_command(scratch: str, repo_url: str, profile: Profile) -> list[str]:
    return [
        "git",
        *_protocol_options(profile),
        "-C",
        scratch,
        "fetch",
        "--quiet",
        "--no-tags",
        "--filter=tree:0",
        "--",
        repo_url,
        "+refs/heads/*:refs/heads/*",
        "+refs/tags/*:refs/tags/*",
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
    found = next((refs[name] for name in candidates if name in refs), None)
    if found is None and _SHORT_SHA.match(ref):
        tips = {sha for sha in refs.values() if sha.startswith(ref)}
        found = tips.pop() if len(tips) == 1 else None
    return found


async def _run(command: list[str], limit_seconds: float, repo_url: str) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    proc = await asyncio.create_subprocess_exec(
        *command,
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
        raise ResolveError(
            f"The repository {repo_url} did not answer within {limit_seconds:.0f} s",
            FailureReason.REPO_UNREACHABLE,
        ) from None
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no detail"]
        raise ResolveError(
            f"Could not read the repository {repo_url}: {detail[0]}",
            FailureReason.REPO_UNREACHABLE,
        )
    return stdout.decode(errors="replace")


async def _find_in_history(
    repo_url: str, short_sha: str, profile: Profile, limit_seconds: float
) -> str | None:
    """A short SHA that is no branch or tag tip: fetch commits only (no trees, no blobs)."""
    scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="bindery-resolve-")
    try:
        await _run(["git", "init", "-q", "--bare", scratch], limit_seconds, repo_url)
        await _run(fetch_command(scratch, repo_url, profile), limit_seconds, repo_url)
        revision = f"{short_sha}^{{commit}}"
        try:
            out = await _run(
                [
                    "git",
                    "-C",
                    scratch,
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    revision,
                ],
                limit_seconds,
                repo_url,
            )
        except ResolveError:
            return None
        commit = out.strip()
        return commit if _SHA.match(commit) else None
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


async def resolve_commit(repo_url: str, ref: str, profile: Profile, limit_seconds: float) -> str:
    if _SHA.match(ref.lower()):
        return ref.lower()
    listing = await _run(git_command(repo_url, profile), limit_seconds, repo_url)
    commit = pick_commit(listing, ref)
    if commit is None and _SHORT_SHA.match(ref):
        commit = await _find_in_history(repo_url, ref, profile, limit_seconds)
    if commit is None:
        raise ResolveError(
            f"Could not resolve ref {ref!r} in {repo_url}: no branch, tag or commit of that name",
            FailureReason.REF_NOT_FOUND,
        )
    return commit
