"""R repositories (install.R, DESCRIPTION) built for real from a local CRAN-like directory (the
builder's cran_mirror setting), and refused at once without one (issue 3)."""

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindery.builder.buildprocess import FailureReason, run_build
from bindery.builder.cran import CRAN_MOUNT, PUBLIC_CRAN
from bindery.builder.job import BuildOptions, BuildRequest
from tests.integration.builder.conftest import Log
from tests.support.cranmirror import PROBE, PROBE_ANSWER, RPackage, make_cran_mirror
from tests.support.gitrepo import make_repo, notebook
from tests.support.sandbox import podman_run, readable_dir

# A repository that is an R package of its own, needing the probe from the mirror.
REPO_PACKAGE = RPackage(
    name="binderyrepo",
    version="0.2.0",
    code='hello <- function() paste("repo:", binderyprobe::probe_answer())\n',
    imports=(PROBE.name,),
)


@pytest.fixture(scope="module")
def mirror() -> Iterator[Path]:
    with readable_dir() as path:
        yield make_cran_mirror(path / "cran", [PROBE])


@pytest.fixture
def r_options(options: BuildOptions, mirror: Path) -> BuildOptions:
    return dataclasses.replace(options, cran_mirror=str(mirror))


async def test_install_r_installs_from_the_mirror_and_registers_the_r_kernel(
    tmp_path: Path, r_options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    # A comment of its own: the environment (keyed on install.R) is built here, from the mirror.
    install_r = f'# {uuid.uuid4().hex}\ninstall.packages("{PROBE.name}")\n'
    sha = make_repo(repo, {"install.R": install_r, "index.ipynb": notebook("1")})
    log = Log()
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)

    result = await run_build(request, log, r_options)

    assert result.ok, result.message + "\n" + log.text()
    assert "R packages come from this Bindery's local CRAN mirror" in log.text()
    out = podman_run(image_name, "Rscript", "-e", f"library({PROBE.name}); cat(probe_answer())")
    assert out == PROBE_ANSWER
    kernels = podman_run(image_name, "/srv/venv/bin/jupyter", "kernelspec", "list", "--json")
    assert '"ir"' in kernels and '"python3"' in kernels, kernels
    # The mirror was there for the build only: sessions get a repository they may reach.
    assert podman_run(image_name, "Rscript", "-e", 'cat(getOption("repos"))') == PUBLIC_CRAN
    assert podman_run(image_name, "sh", "-c", f"ls -A {CRAN_MOUNT} 2>/dev/null; true") == ""


async def test_a_description_repository_is_installed_with_its_imports(
    tmp_path: Path, r_options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    files = REPO_PACKAGE.files()
    # A field of its own: the environment (keyed on DESCRIPTION) is built here, from the mirror.
    files["DESCRIPTION"] += f"X-Bindery-Test: {uuid.uuid4().hex}\n"
    sha = make_repo(repo, files)
    log = Log()
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)

    result = await run_build(request, log, r_options)

    assert result.ok, result.message + "\n" + log.text()
    out = podman_run(image_name, "Rscript", "-e", f"library({REPO_PACKAGE.name}); cat(hello())")
    assert out == f"repo: {PROBE_ANSWER}"


async def test_without_a_mirror_an_r_repository_fails_at_once_naming_the_host(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"install.R": f'install.packages("{PROBE.name}")\n'})
    log = Log()

    result = await run_build(BuildRequest(f"file://{repo}", sha, image_name), log, options)

    assert result.reason is FailureReason.STEP_FAILED, result.message
    assert "cloud.r-project.org" in result.message and "no mirror" in result.message
    assert not any(line.message.startswith("STEP ") for line in log.lines), "nothing was built"


async def test_an_empty_mirror_directory_fails_at_once_saying_so(
    tmp_path: Path, readable_tmp: Path, options: BuildOptions, image_name: str
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"install.R": f'install.packages("{PROBE.name}")\n'})
    empty = readable_tmp / "empty-mirror"
    empty.mkdir()
    log = Log()
    request = BuildRequest(f"file://{repo}", sha, image_name, push=False)

    result = await run_build(request, log, dataclasses.replace(options, cran_mirror=str(empty)))

    assert result.reason is FailureReason.STEP_FAILED, result.message
    assert "no package index" in result.message
    assert not any(line.message.startswith("STEP ") for line in log.lines), "nothing was built"
