"""environment.yml built from a real conda channel (made and served on 127.0.0.1 by the test,
with a Python made from Debian's): a conda environment of its own, as repo2docker makes it,
whose Python is the session's kernel."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindery.builder.buildprocess import run_build
from bindery.builder.job import BuildOptions, BuildRequest
from bindery.builder.pythons import DEFAULT_PYTHON
from tests.integration.builder.conftest import Log
from tests.support.condachannel import CHANNEL, PROBE_VERSION, ServedChannel, served_channel
from tests.support.gitrepo import commit, make_repo, notebook
from tests.support.sandbox import podman_run, sandbox_podman


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedChannel]:
    with served_channel(tmp_path_factory.mktemp("channel")) as served:
        yield served


@pytest.fixture
def conda_options(options: BuildOptions, channel: ServedChannel, tmp_path: Path) -> BuildOptions:
    # A package cache of this test's own, so what it downloads is what this build needed.
    return dataclasses.replace(
        options, conda_channel_alias=channel.alias, conda_pkgs_dir=str(tmp_path / "pkgs")
    )


ENV = "/srv/conda/envs/notebook"

PROBE = """
import bindery_probe, pyfiglet, subprocess, sys
print(sys.executable, sys.prefix, bindery_probe.__version__, bindery_probe.__file__)
print(subprocess.run(["bindery-probe"], capture_output=True, text=True, check=True).stdout)
"""

# A real kernel, started as the session's Jupyter (in /srv/venv) starts its python3 kernel.
KERNEL = """
from jupyter_client.manager import start_new_kernel
manager, client = start_new_kernel(kernel_name="python3")
try:
    client.execute_interactive(
        "import sys, bindery_probe; print('kernel', sys.executable, sys.prefix)", timeout=60
    )
finally:
    client.stop_channels()
    manager.shutdown_kernel(now=True)
"""

VARIABLES = (
    "echo $CONDA_DIR $NB_PYTHON_PREFIX $KERNEL_PYTHON_PREFIX $CONDA_DEFAULT_ENV; command -v python"
)


async def test_environment_yml_becomes_a_conda_environment_of_its_own_and_is_reused(
    tmp_path: Path, conda_options: BuildOptions, image_name: str, channel: ServedChannel
) -> None:
    repo = tmp_path / "repo"
    environment = (
        f"name: probe\nchannels: [{CHANNEL}]\ndependencies:\n  - python=3.11\n"
        "  - bindery-probe\n  - pip:\n    - pyfiglet==1.0.2\n"
    )
    first = make_repo(repo, {"environment.yml": environment, "a.ipynb": notebook("1")})
    log = Log()
    result = await run_build(
        BuildRequest(f"file://{repo}", first, image_name, push=False), log, conda_options
    )
    assert result.ok, result.message + "\n" + log.text()
    text = log.text()
    # python, python_abi, bindery-probe, bindery-probe-data: the channel's Python.
    assert f"4 conda packages solved from {CHANNEL} at {channel.alias}" in text, text
    assert f"Python {DEFAULT_PYTHON}." in text and f"installed into {ENV}" in text
    assert "4 downloaded, 0 from the package cache" in text
    assert "the channels have no ipykernel: it comes from the package index" in text

    out = podman_run(image_name, "python", "-c", PROBE).split()
    site = f"{ENV}/lib/python3.11/site-packages"
    assert out[:4] == [f"{ENV}/bin/python", ENV, PROBE_VERSION, f"{site}/bindery_probe/__init__.py"]
    # The entry point ran and read the file whose placeholder became the in-image prefix.
    assert out[4:] == ["bindery-probe", PROBE_VERSION, f"{ENV}/share/bindery-probe"]
    assert podman_run(image_name, "bindery-probe-where").strip() == ENV
    # The pip: section went into the environment, not the server's venv.
    assert podman_run(image_name, f"{ENV}/bin/python", "-c", "import pyfiglet") == ""
    # repo2docker's variables, in login shells too (Debian's profile resets PATH).
    for shell in (["sh", "-c"], ["bash", "-lc"]):
        assert podman_run(image_name, *shell, VARIABLES).split() == [
            "/srv/conda",
            ENV,
            ENV,
            ENV,
            f"{ENV}/bin/python",
        ]
    assert "kernel " + f"{ENV}/bin/python {ENV}" in podman_run(
        image_name, "/srv/venv/bin/python", "-c", KERNEL
    )
    # The environment can be inspected: conda-meta and the lock, owned by the user.
    listing = podman_run(image_name, "ls", "-ln", f"{ENV}/conda-meta")
    assert "python-3.11" in listing and " 1000 1000 " in listing
    lock = podman_run(image_name, "cat", "/usr/local/share/bindery/environment-conda-lock.json")
    assert f"{channel.alias}/{CHANNEL}/noarch/bindery-probe-1.2.3-pyh_0.conda" in lock
    assert "channel_alias: " + channel.alias in podman_run(image_name, "cat", "/srv/conda/.condarc")

    # Another commit of the same environment: its image is reused, nothing is downloaded.
    second = commit(repo, {"a.ipynb": notebook("2")}, "edit the notebook")
    second_image = image_name.replace(":latest", ":second")
    log = Log()
    try:
        request = BuildRequest(f"file://{repo}", second, second_image, push=False)
        result = await run_build(request, log, conda_options)
        assert result.ok, result.message + "\n" + log.text()
        assert podman_run(second_image, "bindery-probe-where").strip() == ENV
    finally:
        await asyncio.to_thread(
            subprocess.run, [*sandbox_podman(), "rmi", "--force", second_image], capture_output=True
        )
    text = log.text()
    assert "exists: adding the repository only" in text, text
    assert "downloaded" not in text and "uv pip install" not in text


async def test_an_environment_no_channel_can_satisfy_fails_with_the_solvers_reason(
    tmp_path: Path, conda_options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    environment = f"channels: [{CHANNEL}]\ndependencies:\n  - bindery-needs-py310\n"
    sha = make_repo(repo, {"environment.yml": environment})
    log = Log()
    result = await run_build(
        BuildRequest(f"file://{repo}", sha, image_name, push=False), log, conda_options
    )
    assert not result.ok
    assert result.reason is not None and result.reason.value == "step_failed"
    assert "cannot be solved" in result.message and "python >=3.10,<3.11" in result.message


async def test_without_a_channel_conda_forge_names_install_their_pypi_distributions(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    """No channel configured: matplotlib-base (conda-forge's name) is PyPI's matplotlib."""
    repo = tmp_path / "repo"
    environment = (
        "name: plots\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n"
        "  - matplotlib-base=3.10\n  - r-ggplot2\n"
    )
    sha = make_repo(repo, {"environment.yml": environment})
    log = Log()
    result = await run_build(
        BuildRequest(f"file://{repo}", sha, image_name, push=False), log, options
    )
    assert result.ok, result.message + "\n" + log.text()
    text = log.text()
    assert "conda names mapped to PyPI" in text and "matplotlib-base -> matplotlib" in text, text
    assert "skipped conda dependencies not on the package index: r-ggplot2" in text
    probe = "import matplotlib, matplotlib.pyplot; print(matplotlib.__version__)"
    assert podman_run(image_name, "python", "-c", probe).startswith("3.10.")
