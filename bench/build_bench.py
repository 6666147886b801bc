"""Build benchmark (issue 3): how fast a repository becomes a session, against repo2docker's route.

Runs the whole stack (tests.support.stack, in this BINDERY_TEST_SLOT's virtual host) and measures,
for a requirements.txt repository with numpy:
- cold: a launch of a repository never built (its environment key is new; the host's uv cache
  mount is as earlier builds left it, as on any builder host), time to ready and build time;
- cached: a second launch of the same commit (image in the registry): time to ready;
- content-only: a launch of a commit that changes only a notebook: time to ready, and how much
  later than the cached launch it is ready;
- anchor, in the same run: the same repository built the way repo2docker's pip route does it --
  Debian's Python, a venv with JupyterLab, `pip install --no-cache-dir -r requirements.txt`, then
  the repository -- with `podman build --no-cache` (no layer cache, no package cache), as root
  (how builds ran before the sandbox) and in the build sandbox (rootless, as the builder runs
  every build now): the same work twice, so their ratio is what the sandbox costs.

Out: bench/results/build.json, and the numbers on stdout. Targets: cold build <= 20 s; a
content-only commit ready <= 5 s later than a cached launch; the sandbox at most 20 % slower.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reporting import write_report  # noqa: E402

from tests.support.gitrepo import commit, make_repo, notebook  # noqa: E402
from tests.support.sandbox import (  # noqa: E402
    SANDBOX,
    readable_dir,
    sandbox_dir,
    sandbox_podman,
)
from tests.support.stack import LOG_DIR, Stack, build_path, launch, started_stack  # noqa: E402

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ROOTFS = "localhost/bindery-rootfs:bookworm"
FINISHED = re.compile(r"Build [0-9a-f]{20} finished in (?P<seconds>[0-9.]+) s")
TARGETS = {
    "cold_build_seconds": 20.0,
    "content_only_extra_seconds": 5.0,
    "sandbox_over_root": 1.2,
}

ANCHOR_DOCKERFILE = f"""FROM {ROOTFS}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update -qq \\
 && apt-get install -qq --yes --no-install-recommends ca-certificates python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 jovyan
USER jovyan
RUN python3 -m venv /home/jovyan/venv
RUN --mount=type=secret,id=pipca,target=/run/secrets/pipca,mode=0444 \\
    PIP_CERT=/run/secrets/pipca /home/jovyan/venv/bin/pip install --no-cache-dir \\
      jupyterlab jupyter-server ipykernel
COPY --chown=1000:1000 requirements.txt /home/jovyan/requirements.txt
RUN --mount=type=secret,id=pipca,target=/run/secrets/pipca,mode=0444 \\
    PIP_CERT=/run/secrets/pipca /home/jovyan/venv/bin/pip install --no-cache-dir \\
      -r /home/jovyan/requirements.txt
COPY --chown=1000:1000 . /home/jovyan/
"""


async def timed_launch(
    http: aiohttp.ClientSession, stack: Stack, repo: Path, ref: str
) -> tuple[float, float | None]:
    """Seconds until the launch is ready, and the build's own seconds if it built."""
    started = time.monotonic()
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", ref))
    elapsed = time.monotonic() - started
    if events[-1]["phase"] != "ready":
        raise SystemExit(f"launch failed: {events[-1]}")
    built = [m for e in events if (m := FINISHED.search(str(e.get("message", ""))))]
    return elapsed, float(built[-1]["seconds"]) if built else None


def anchor_build(repo: Path, podman: list[str]) -> float:
    """repo2docker's pip route, no caches: seconds for `podman build --no-cache` of ``repo``
    (a directory ``podman`` can read) with the ``podman`` command given."""
    tag = f"localhost/bindery-bench-anchor:{uuid.uuid4().hex[:8]}"
    dockerfile = repo / ".bench.Dockerfile"
    dockerfile.write_text(ANCHOR_DOCKERFILE)
    cmd = [*podman, "build", "--no-cache", f"--file={dockerfile}", f"--tag={tag}"]
    if CA_BUNDLE.exists():
        cmd.append(f"--secret=id=pipca,src={CA_BUNDLE}")
    started = time.monotonic()
    try:
        subprocess.run([*cmd, str(repo)], check=True, capture_output=True)
        return time.monotonic() - started
    finally:
        subprocess.run([*podman, "rmi", "--force", tag], capture_output=True, check=False)
        dockerfile.unlink()


def root_rootfs() -> None:
    """The anchor's base image in root's store: it is made in the sandbox's store
    (scripts/base-image.sh), so root gets a copy."""
    if subprocess.run(["podman", "image", "exists", ROOTFS], check=False).returncode != 0:
        saved = subprocess.run(
            sandbox_podman("save", ROOTFS), check=True, capture_output=True
        ).stdout
        subprocess.run(["podman", "load"], input=saved, check=True, capture_output=True)


def anchors(repo: Path) -> dict[str, float]:
    """The anchor as root and in the sandbox, one after the other on the same repository."""
    root_rootfs()
    with sandbox_dir() as context:
        shutil.copytree(repo, context / "repo", symlinks=True)
        SANDBOX.hand_over(context / "repo")
        sandboxed = anchor_build(context / "repo", sandbox_podman())
    as_root = anchor_build(repo, ["podman"])
    return {
        "anchor_build_seconds": as_root,
        "anchor_build_sandbox_seconds": sandboxed,
        "sandbox_over_root": sandboxed / as_root,
    }


async def measure(repo: Path, first: str) -> dict[str, Any]:
    stacks = started_stack(LOG_DIR / "bench-build")
    stack = next(stacks)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http:
            cold_launch, cold_build = await timed_launch(http, stack, repo, first)
            cached_launch, _ = await timed_launch(http, stack, repo, first)
            # By commit: the resolver may answer a branch from its cache for a while.
            second = commit(repo, {"index.ipynb": notebook("print('edited')")}, "content only")
            content_launch, content_build = await timed_launch(http, stack, repo, second)
    finally:
        stacks.close()
    return {
        "cold_build_seconds": cold_build,
        "cold_launch_seconds": cold_launch,
        "cached_launch_seconds": cached_launch,
        "content_only_build_seconds": content_build,
        "content_only_launch_seconds": content_launch,
        "content_only_extra_seconds": content_launch - cached_launch,
    }


def main() -> int:
    # Readable by the resolver, which runs as the services' unprivileged user.
    with readable_dir("bindery-bench-") as scratch:
        repo = scratch / "numpy-repo"
        # A comment of its own: a new environment key, so the cold build really builds.
        requirements = f"numpy\n# bench run {uuid.uuid4().hex}\n"
        first = make_repo(repo, {"requirements.txt": requirements, "index.ipynb": notebook("1")})
        results = asyncio.run(measure(repo, first))
        results.update(anchors(repo))
    results = {key: round(value, 2) for key, value in results.items() if value is not None}
    report = {
        "repository": "requirements.txt: numpy (plus a notebook)",
        "anchor": "repo2docker's pip route: Debian python3 venv, pip --no-cache-dir, "
        "podman build --no-cache, as root and in the build sandbox (sandbox_over_root)",
        "results": results,
        "targets": TARGETS,
        "met": {key: results.get(key, float("inf")) <= limit for key, limit in TARGETS.items()},
    }
    write_report("build", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
