"""Scientific stack benchmark (issue 16, item 5): a cold build of numpy, pandas, scipy,
matplotlib and scikit-learn against the floor of installing them, and repo2docker's pip route.

Runs the whole stack (tests.support.stack, in this BINDERY_TEST_SLOT's virtual host) and
measures, for a local git repository whose requirements.txt lists those five packages (and a
comment of its own, so its environment key is new and the build really builds; the environment's
uv cache is per key, so the build's downloads are cold too):
- cold: its first launch, the build's own seconds (clone, environment image, repository image,
  pushes) and the time until the session is ready (the build, then the node's pull and start),
  with the second each of the launch's phases (building, pushing, pulling, launching) began;
- floor, in the same run: the same requirements installed by uv into an empty venv of the host's
  Python (Debian bookworm's 3.11, the Python of the default base image) from the same index the
  builder's steps use (PyPI through this host's proxy), with an empty uv cache of its own;
- image floor, on that venv: the floor plus what any build of an image that sessions start
  quickly from must add to the install, timed one after the other: the bytecode (without it
  every session compiles what it imports, each time it starts) and one tar + sha256 of the
  environment (a layer is named by its digest). No clone, Jupyter, compression, push or pull;
- anchor, in the same run: repo2docker's pip route as bench/build_bench.py builds it (Debian's
  Python, a venv with JupyterLab, `pip install --no-cache-dir -r requirements.txt`, `podman
  build --no-cache`), as root.

Out: bench/results/scistack.json, and the numbers on stdout. Goal: the cold build <= 1.3 x the
floor.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from build_bench import FINISHED, anchor_build, root_rootfs  # noqa: E402
from reporting import write_report  # noqa: E402

from tests.support.gitrepo import make_repo, notebook  # noqa: E402
from tests.support.sandbox import readable_dir  # noqa: E402
from tests.support.stack import LOG_DIR, build_path, launch_events, started_stack  # noqa: E402

PACKAGES = ("numpy", "pandas", "scipy", "matplotlib", "scikit-learn")
HOST_PYTHON = "/usr/bin/python3"
GOAL_OVER_FLOOR = 1.3
IMAGE_FLOOR = ("floor_uv_seconds", "floor_bytecode_seconds", "floor_layer_digest_seconds")


async def cold_launch(gateway: str, repo: Path, ref: str) -> dict[str, Any]:
    """A launch's time to ready, its build's own seconds, and when each of its phases began
    (seconds since the launch)."""
    phases: dict[str, float] = {}
    build_seconds = None
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http:
        async for event in launch_events(http, gateway, build_path(f"file://{repo}", ref)):
            phases.setdefault(event["phase"], round(time.monotonic() - started, 2))
            if found := FINISHED.search(str(event.get("message", ""))):
                build_seconds = float(found["seconds"])
    if "ready" not in phases:
        raise SystemExit(f"launch failed: {event}")
    return {
        "cold_build_seconds": build_seconds,
        "cold_launch_seconds": phases["ready"],
        "phase_started_seconds": phases,
    }


def floor(requirements: Path) -> dict[str, float]:
    """Seconds for uv to install ``requirements`` into an empty venv, its cache empty; then, on
    that venv, what any build of an image sessions start quickly from must add to it: the
    bytecode (without it, each session compiles what it imports, every time it starts) and one
    read and digest of the environment's files (an image layer is named by its bytes' sha256)."""
    with tempfile.TemporaryDirectory(prefix="bindery-bench-floor-") as scratch:
        env = {**os.environ, "UV_CACHE_DIR": f"{scratch}/cache", "UV_NATIVE_TLS": "1"}
        venv = f"{scratch}/venv"
        subprocess.run(
            ["uv", "venv", "--quiet", f"--python={HOST_PYTHON}", venv], env=env, check=True
        )
        started = time.monotonic()
        subprocess.run(
            ["uv", "pip", "install", "--quiet", f"--python={venv}", "-r", str(requirements)],
            env=env,
            check=True,
        )
        installed = time.monotonic()
        # What `uv pip install --compile-bytecode` and pip do, on every core.
        subprocess.run(
            [f"{venv}/bin/python", "-m", "compileall", "-q", "-j", "0", f"{venv}/lib"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        compiled = time.monotonic()
        layer_digest(Path(venv))
        digested = time.monotonic()
    return {
        "floor_uv_seconds": installed - started,
        "floor_bytecode_seconds": compiled - installed,
        "floor_layer_digest_seconds": digested - compiled,
    }


def layer_digest(directory: Path) -> str:
    """The sha256 of ``directory`` as one uncompressed tar stream: the least an image layer of
    it costs (read every file once, hash every byte), before any compression, push or pull."""
    digest = hashlib.sha256()
    with subprocess.Popen(
        ["tar", "-C", str(directory.parent), "-cf", "-", directory.name], stdout=subprocess.PIPE
    ) as tar:
        assert tar.stdout is not None
        while chunk := tar.stdout.read(1 << 20):
            digest.update(chunk)
    if tar.returncode:
        raise SystemExit(f"tar of {directory} failed ({tar.returncode})")
    return digest.hexdigest()


def main() -> int:
    # Readable by the resolver, which runs as the services' unprivileged user.
    with readable_dir("bindery-bench-") as scratch:
        repo = scratch / "scistack-repo"
        requirements = "\n".join(PACKAGES) + f"\n# bench run {uuid.uuid4().hex}\n"
        first = make_repo(repo, {"requirements.txt": requirements, "index.ipynb": notebook("1")})
        stacks = started_stack(LOG_DIR / "bench-scistack")
        try:
            results = asyncio.run(cold_launch(next(stacks).gateway, repo, first))
        finally:
            stacks.close()
        results |= floor(repo / "requirements.txt")
        root_rootfs()
        results["anchor_r2d_pip_seconds"] = anchor_build(repo, ["podman"])
    results = {
        key: round(value, 2) if isinstance(value, float) else value
        for key, value in results.items()
    }
    over_floor = results["cold_build_seconds"] / results["floor_uv_seconds"]
    image_floor = sum(results[key] for key in IMAGE_FLOOR)
    report = {
        "benchmark": "scistack",
        "repository": f"requirements.txt: {', '.join(PACKAGES)} (plus a notebook)",
        "floor": f"uv pip install -r requirements.txt into an empty venv of {HOST_PYTHON}, "
        "empty uv cache, same index (PyPI through this host's proxy), same run",
        "anchor": "repo2docker's pip route: Debian python3 venv with JupyterLab, pip "
        "--no-cache-dir, podman build --no-cache, as root (bench/build_bench.py)",
        "image_floor": "the floor, plus compiling the floor venv's bytecode and one tar + "
        "sha256 of it (with its bytecode): the least a build of an image sessions start "
        "quickly from adds, done one after the other, with nothing for the clone, Jupyter, "
        "compression, the registry or the node",
        "results": {
            **results,
            "cold_build_over_floor": round(over_floor, 2),
            "image_floor_seconds": round(image_floor, 2),
            "image_floor_over_floor": round(image_floor / results["floor_uv_seconds"], 2),
            "cold_build_over_image_floor": round(results["cold_build_seconds"] / image_floor, 2),
        },
        "goal": {"cold_build_over_floor": GOAL_OVER_FLOOR, "met": over_floor <= GOAL_OVER_FLOOR},
    }
    write_report("scistack", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
