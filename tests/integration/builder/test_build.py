"""A repository at a commit becomes an image in the registry that runs Jupyter as jovyan."""

import asyncio
import dataclasses
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindery.builder.buildprocess import FailureReason, run_build
from bindery.builder.indexforward import STEP_HOST, IndexForwarder
from bindery.builder.job import BuildOptions, BuildRequest
from tests.integration.builder.conftest import Log
from tests.support.canary import planted_canary
from tests.support.eventually import eventually
from tests.support.gitrepo import commit, make_repo, notebook
from tests.support.pypiindex import ANSWER, NAME, served_index
from tests.support.sandbox import podman_run, sandbox_podman


def manifest_status(image: str) -> int:
    registry, _, rest = image.partition("/")
    name, _, tag = rest.rpartition(":")
    request = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


async def test_builds_pushes_and_runs(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"requirements.txt": "pyfiglet\n", "hello.ipynb": notebook("1 + 1")})
    log = Log()

    result = await run_build(BuildRequest(f"file://{repo}", sha, image_name), log, options)

    assert result.ok, result.message + "\n" + log.text()
    phases = [line.phase for line in log.lines[:-1]]
    assert {"fetching", "building", "pushing"} <= set(phases)
    assert log.lines[-1].message == f"Built {image_name}"
    assert phases.index("pushing") > max(i for i, p in enumerate(phases) if p == "building")
    assert manifest_status(image_name) == 200
    out = podman_run(
        image_name,
        "python",
        "-c",
        "import os, pyfiglet; print(os.getuid(), os.getcwd(), sorted(os.listdir('.')))",
    )
    uid, cwd, files = out.split(" ", 2)
    assert (uid, cwd) == ("1000", "/home/jovyan")
    assert "'hello.ipynb'" in files and "'requirements.txt'" in files
    # Installed compiled: a session imports the environment's packages without compiling them.
    compiled = (
        "import importlib.util as u, os; "
        "print(os.path.exists(u.cache_from_source(u.find_spec('pyfiglet').origin)))"
    )
    assert podman_run(image_name, "python", "-B", "-c", compiled).strip() == "True"
    # The CA bundle was a build secret: it must be in no layer.
    assert podman_run(image_name, "ls", "-A", "/run/secrets") == ""


async def test_a_notebook_change_reuses_the_environment_layers(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    first = make_repo(repo, {"requirements.txt": "pyfiglet\n", "a.ipynb": notebook("1")})
    request = BuildRequest(f"file://{repo}", first, image_name, push=False)
    assert (await run_build(request, Log(), options)).ok

    second = commit(repo, {"a.ipynb": notebook("2")}, "edit the notebook")
    # Another commit is another image (the same name would be reused as it is).
    second_image = image_name.replace(":latest", ":second")
    log = Log()
    try:
        request = BuildRequest(f"file://{repo}", second, second_image, push=False)
        result = await run_build(request, log, options)
        assert result.ok, result.message
        assert podman_run(second_image, "cat", "a.ipynb") == notebook("2")
    finally:
        await asyncio.to_thread(
            subprocess.run, [*sandbox_podman(), "rmi", "--force", second_image], capture_output=True
        )

    # The environment image of the first commit is the second's: only the repository is added.
    messages = [line.message for line in log.lines]
    assert any(m.endswith("exists: adding the repository only") for m in messages), log.text()
    assert not any("uv pip install" in m for m in messages), log.text()


async def test_the_package_index_is_handed_to_the_build_and_left_in_no_layer(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    # A requirements file of its own: the environment is built here, with the index.
    requirements = f"pyfiglet\n# {uuid.uuid4().hex}\n"
    sha = make_repo(repo, {"requirements.txt": requirements})
    index = "https://pypi.org/simple/"
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
    log = Log()
    result = await run_build(request, log, dataclasses.replace(options, index_url=index))
    assert result.ok, result.message + log.text()
    assert podman_run(image_name, "python", "-c", "import pyfiglet") == ""
    assert podman_run(image_name, "ls", "-A", "/run/secrets") == ""
    history = (
        await asyncio.to_thread(
            subprocess.run,
            [*sandbox_podman(), "history", "--no-trunc", "--format={{.CreatedBy}}", image_name],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    inspect = (
        await asyncio.to_thread(
            subprocess.run,
            [*sandbox_podman(), "image", "inspect", image_name],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    assert index not in history and index not in inspect


async def test_a_repository_over_the_size_limit_is_too_large(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"data.txt": "x" * 300_000, "requirements.txt": "pyfiglet\n"})
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
    limited = dataclasses.replace(options, max_repo_bytes=200_000)
    log = Log()
    result = await run_build(request, log, limited)
    assert result.reason is FailureReason.TOO_LARGE, result.message
    assert "limit" in result.message
    assert not any(line.message.startswith("STEP ") for line in log.lines), "nothing was built"


async def test_binder_folder_wins_over_the_root(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    # Were the root file used, the build would fail: the package does not exist.
    sha = make_repo(
        repo,
        {
            "requirements.txt": "bindery-no-such-package-7f3a\n",
            "binder/requirements.txt": "pyfiglet\n",
            "binder/postBuild": "#!/bin/sh\necho built-by-postbuild > ~/marker\n",
        },
    )
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
    result = await run_build(request, Log(), options)
    assert result.ok, result.message
    assert podman_run(image_name, "python", "-c", "import pyfiglet") == ""
    assert podman_run(image_name, "cat", "/home/jovyan/marker") == "built-by-postbuild\n"


async def test_the_image_serves_jupyter_lab_the_way_the_scheduler_starts_it(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"hello.ipynb": notebook("1")})
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
    assert (await run_build(request, Log(), options)).ok

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = os.urandom(8).hex()
    started = await asyncio.to_thread(
        subprocess.run,
        [
            *sandbox_podman(), "run", "-d", "--rm", "--user=1000", f"-p=127.0.0.1:{port}:8888",
            f"--env=JUPYTER_TOKEN={token}", image_name,
            "jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser",
            "--ServerApp.base_url=/user/someone/",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    container = started.stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}/user/someone/api/contents?token={token}"

        def contents() -> str:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode())

        body = await eventually(
            lambda: asyncio.to_thread(contents),
            within=60,
            every=0.2,
            what="Jupyter's contents API answering",
            ignoring=(OSError,),
        )
        assert '"name": "hello.ipynb"' in body
    finally:
        await asyncio.to_thread(
            subprocess.run,
            [*sandbox_podman(), "rm", "-f", "-t", "0", container],
            capture_output=True,
        )


async def test_a_failing_step_reports_its_output(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"requirements.txt": "bindery-no-such-package-7f3a\n"})
    request = BuildRequest(f"file://{repo}", sha, image_name)
    result = await run_build(request, Log(), options)
    assert result.reason is FailureReason.STEP_FAILED
    assert "bindery-no-such-package-7f3a" in result.message
    assert manifest_status(image_name) == 404


async def test_an_unknown_commit_is_a_clone_failure(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"a.txt": "a"})
    result = await run_build(BuildRequest(f"file://{repo}", "0" * 40, image_name), Log(), options)
    assert result.reason is FailureReason.CLONE_FAILED
    assert "0" * 40 in result.message


async def test_a_step_over_the_memory_limit_is_out_of_memory(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(
        repo,
        {"postBuild": "#!/bin/sh\npython3 -c 'x = bytearray(1024 ** 3); print(len(x))'\n"},
    )
    limited = dataclasses.replace(options, memory_limit=256 * 1024**2)
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
    result = await run_build(request, Log(), limited)
    assert result.reason is FailureReason.OOM, result.message


async def test_a_build_over_its_time_is_stopped_with_everything_it_started(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    # A sleep of its own (other stacks on the machine may sleep 300 s too): pgrep finds only it.
    sleep = f"sleep 300.{secrets.randbelow(10**6):06d}"
    sha = make_repo(repo, {"postBuild": f"#!/bin/sh\n{sleep}\n"})
    quick = dataclasses.replace(options, timeout=8.0)
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
    started = time.monotonic()
    log = Log()
    result = await run_build(request, log, quick)
    assert result.reason is FailureReason.TIMEOUT
    assert time.monotonic() - started < 8.0 + quick.kill_grace + 5
    leftovers = (
        await asyncio.to_thread(
            subprocess.run, ["pgrep", "-f", image_name], capture_output=True, text=True, check=False
        )
    ).stdout.split()
    assert leftovers == []
    sleepers = (
        await asyncio.to_thread(
            subprocess.run,
            ["pgrep", "-x", "-f", sleep],
            capture_output=True,
            text=True,
            check=False,
        )
    ).stdout.split()
    assert sleepers == []
    # The step had started: the sleep was killed, not a build that never got that far.
    assert any("postBuild" in line.message for line in log.lines), log.text()


@pytest.fixture(autouse=True)
def _no_build_containers_left() -> Iterator[None]:
    """podman must not keep build containers around after any build, failed or not."""
    yield
    for _attempt in range(3):
        # podman exits 125 when a container vanishes while it lists: ask again.
        ps = subprocess.run(
            [*sandbox_podman(), "ps", "--all", "--external", "--format", "{{.Image}}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if ps.returncode == 0:
            break
    assert ps.returncode == 0, ps.stderr
    assert "bindery-base" not in ps.stdout


async def test_a_fetch_in_the_sandbox_is_refused_the_host_at_connect_time(
    options: BuildOptions, image_name: str
) -> None:
    """A repository host that resolves to loopback by build time (or redirects there) is
    refused by the sandbox's network rules when the clone connects; the same clone as the
    builder itself would have reached it."""
    with planted_canary() as canary:
        url = f"http://127.0.0.1:{canary.port}/someone/repo.git"
        request = BuildRequest(url, "a" * 40, image_name, push=False)
        direct = dataclasses.replace(options, allowed_schemes=("http",))
        sandboxed = dataclasses.replace(direct, fetch_in_sandbox=True)

        refused = await run_build(request, Log(), sandboxed)
        assert refused.reason is FailureReason.CLONE_FAILED, refused.message
        assert canary.hits == []

        reached = await run_build(request, Log(), direct)
        assert reached.reason is FailureReason.CLONE_FAILED, reached.message
        assert canary.hits, "the control clone should have reached the canary"


async def test_no_build_starts_below_the_free_disk_floor(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"requirements.txt": "\n"})
    floor = dataclasses.replace(options, min_free_disk=2**60)
    result = await run_build(BuildRequest(f"file://{repo}", sha, image_name), Log(), floor)
    assert result.reason is FailureReason.DISK_FULL
    assert "free, below its floor" in result.message


async def test_an_index_with_credentials_reaches_builds_without_them(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    """The builder's forwarder serves a private index to the build's steps: the package
    installs, and neither the steps (postBuild prints what it can see) nor the image hold the
    index's password."""
    with served_index() as index:
        forwarder = IndexForwarder(index.url, port=8599)
        await forwarder.start()
        try:
            private = dataclasses.replace(
                options,
                index_url=forwarder.url_for(STEP_HOST),
                index_lookup_url=forwarder.url_for("127.0.0.1"),
            )
            repo = tmp_path / "repo"
            post_build = (
                "#!/bin/bash\nenv\ncat /run/secrets/* /etc/pip.conf 2>&1\n"
                "python -c 'import bindery_index_probe as p; print(p.ANSWER)'\n"
            )
            # A comment of its own: a new environment key, so this run installs from the index.
            requirements = f"{NAME}\n# {uuid.uuid4().hex}\n"
            sha = make_repo(repo, {"requirements.txt": requirements, "postBuild": post_build})
            log = Log()
            request = BuildRequest(f"file://{repo}", sha, image_name, push=False)
            result = await run_build(request, log, private)
        finally:
            await forwarder.close()
    assert result.ok, log.text()
    assert ANSWER in log.text()
    assert index.password not in log.text()
    assert any(authorised for _, authorised in index.requests)
    image = (
        await asyncio.to_thread(
            subprocess.run,
            sandbox_podman("image", "inspect", image_name),
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    assert index.password not in image
