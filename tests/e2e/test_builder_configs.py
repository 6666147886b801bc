"""Each repo2docker configuration file, built and launched for real: the running session shows
that the file had its effect (issue 3). Small repositories, one shared stack."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.builder.baseimage import base_image_name
from bindery.builder.cran import PUBLIC_CRAN
from bindery.builder.pythons import DEFAULT_PYTHON
from tests.support.condachannel import CHANNEL, PROBE_VERSION
from tests.support.cranmirror import PROBE as R_PROBE_PACKAGE
from tests.support.cranmirror import PROBE_ANSWER
from tests.support.gitrepo import make_repo, notebook
from tests.support.kernel import run_code, start_kernel
from tests.support.stack import (
    ProbedSession,
    Stack,
    build_path,
    launch,
    launch_and_probe,
    stop_session,
)


async def launch_failure(http: aiohttp.ClientSession, stack: Stack, repo: Path) -> dict[str, Any]:
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
    assert events[-1]["phase"] == "failed", events[-1]
    return events[-1]


def lines(output: str) -> dict[str, str]:
    """``key value`` lines the probes print, as a dict."""
    return dict(line.split(" ", 1) for line in output.splitlines() if " " in line)


VERSION = "from importlib.metadata import version; "

ROOT_PROBE = """
import os, shutil, sys
print("python", "%d.%d" % sys.version_info[:2])
print("jq", shutil.which("jq"))
print("marker", open(os.path.expanduser("~/postbuild-marker")).read().strip())
print("start", os.environ.get("BINDERY_FROM_START"))
import pyfiglet; print("pyfiglet", pyfiglet.__name__)
"""


@pytest.fixture(scope="module")
async def root_session(stack: Stack, http: aiohttp.ClientSession, repos: Path) -> dict[str, str]:
    """requirements.txt, apt.txt, postBuild, start and runtime.txt, all at the root."""
    repo = repos / "configs-root"
    make_repo(
        repo,
        {
            "requirements.txt": "pyfiglet==1.0.2\n",
            "apt.txt": "jq\n",
            "postBuild": "#!/bin/bash\nset -e\necho postBuild-ran > ~/postbuild-marker\n",
            "start": '#!/bin/bash\nexport BINDERY_FROM_START=yes\nexec "$@"\n',
            "runtime.txt": "python-3.11\n",
            "index.ipynb": notebook("1"),
        },
    )
    return lines((await launch_and_probe(http, stack, repo, ROOT_PROBE)).output)


async def test_requirements_txt_is_installed(root_session: dict[str, str]) -> None:
    assert root_session.get("pyfiglet") == "pyfiglet", root_session


async def test_apt_txt_packages_are_installed(root_session: dict[str, str]) -> None:
    assert root_session.get("jq") == "/usr/bin/jq", root_session


async def test_postbuild_ran_with_the_repository(root_session: dict[str, str]) -> None:
    assert root_session.get("marker") == "postBuild-ran", root_session


async def test_start_exports_reach_the_kernel(root_session: dict[str, str]) -> None:
    assert root_session.get("start") == "yes", root_session


async def test_runtime_txt_python_is_honoured(root_session: dict[str, str]) -> None:
    assert root_session.get("python") == "3.11", root_session


@pytest.mark.parametrize(
    ("files", "probe", "key", "expected"),
    [
        pytest.param(
            {
                # Read, these would fail the build.
                "requirements.txt": "no-such-package-bindery-test==1.0\n",
                "postBuild": "#!/bin/bash\nexit 1\n",
                "binder/requirements.txt": "pyfiglet==1.0.2\n",
                "binder/postBuild": "#!/bin/bash\necho from-binder > ~/postbuild-marker\n",
            },
            "import os, pyfiglet; "
            "print('marker', open(os.path.expanduser('~/postbuild-marker')).read().strip())",
            "marker",
            "from-binder",
            id="binder-folder-wins-over-the-root",
        ),
        pytest.param(
            {
                "setup.py": "from setuptools import setup\n"
                "setup(name='bindery-setuppy-probe', version='0.1', py_modules=['setuppy_probe'],"
                " install_requires=['pyfiglet'])\n",
                "setuppy_probe.py": "ANSWER = 42\n",
            },
            VERSION + "import pyfiglet; print('version', version('bindery-setuppy-probe'))",
            "version",
            "0.1",
            id="setup-py-is-installed",
        ),
        pytest.param(
            {
                "pyproject.toml": '[project]\nname = "bindery-pyproject-probe"\nversion = "0.2"\n'
                'dependencies = ["tabulate"]\n\n'
                '[build-system]\nrequires = ["setuptools>=61"]\n'
                'build-backend = "setuptools.build_meta"\n\n'
                '[tool.setuptools]\npy-modules = ["pyproject_probe"]\n',
                "pyproject_probe.py": "ANSWER = 42\n",
            },
            VERSION + "import tabulate; print('version', version('bindery-pyproject-probe'))",
            "version",
            "0.2",
            id="pyproject-toml-project-is-installed",
        ),
        pytest.param(
            {"Pipfile": '[packages]\ntabulate = "==0.9.0"\n\n[dev-packages]\npyfiglet = "*"\n'},
            VERSION + "import pyfiglet; print('version', version('tabulate'))",
            "version",
            "0.9.0",
            id="pipfile-packages-are-installed",
        ),
        pytest.param(
            {
                "Pipfile": '[packages]\ntabulate = "*"\n',
                "Pipfile.lock": json.dumps(
                    {"_meta": {}, "default": {"tabulate": {"version": "==0.8.10"}}, "develop": {}}
                ),
            },
            VERSION + "print('version', version('tabulate'))",
            "version",
            "0.8.10",
            id="pipfile-lock-wins-over-the-pipfile",
        ),
        pytest.param(
            {
                "Dockerfile": f"FROM {base_image_name(DEFAULT_PYTHON)}\n"
                "RUN echo from-dockerfile > /home/jovyan/.dockerfile-marker\n",
                "requirements.txt": "no-such-package-bindery-test==1.0\n",
            },
            "print('marker', open('/home/jovyan/.dockerfile-marker').read().strip())",
            "marker",
            "from-dockerfile",
            id="dockerfile-is-built-as-it-is",
        ),
    ],
)
async def test_configuration_file_takes_effect_in_the_session(
    stack: Stack,
    http: aiohttp.ClientSession,
    repos: Path,
    request: pytest.FixtureRequest,
    files: dict[str, str],
    probe: str,
    key: str,
    expected: str,
) -> None:
    repo = repos / f"configs-{request.node.callspec.id}"
    make_repo(repo, files)
    session = await launch_and_probe(http, stack, repo, probe)
    assert lines(session.output).get(key) == expected, session.output


async def test_binder_and_dot_binder_together_fail_clearly(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / "configs-both-binders"
    make_repo(repo, {"binder/requirements.txt": "pyfiglet\n", ".binder/apt.txt": "jq\n"})
    failed = await launch_failure(http, stack, repo)
    assert failed.get("reason") == "step_failed", failed
    assert "'binder' and a '.binder'" in failed["message"]


async def test_environment_yml_without_conda_installs_what_pypi_has(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / "configs-environment-yml"
    make_repo(
        repo,
        {
            "environment.yml": "name: probe\nchannels: [conda-forge]\ndependencies:\n"
            "  - python=3.11\n  - tabulate=0.9\n  - r-ggplot2\n  - pip\n"
            "  - pip:\n    - pyfiglet==1.0.2\n",
        },
    )
    probe = VERSION + "import pyfiglet; print('version', version('tabulate'))"
    session = await launch_and_probe(http, stack, repo, probe)
    assert lines(session.output).get("version", "").startswith("0.9."), session.output
    # The stack's channel host has no conda-forge: the log says so, and which were skipped.
    assert "conda-forge at http://127.0.0.1:" in session.log, session.log
    assert "could not be reached" in session.log and "404" in session.log
    assert "skipped conda dependencies not on the package index: r-ggplot2" in session.log


CONDA_PROBE = """
import os, subprocess, sys, bindery_probe, pyfiglet
print("module", bindery_probe.__file__)
print("python", sys.executable)
print("prefix", sys.prefix)
print("variables", os.environ["NB_PYTHON_PREFIX"], os.environ["KERNEL_PYTHON_PREFIX"])
print("entry", subprocess.run(["bindery-probe"], capture_output=True, text=True).stdout.strip())
print("where", subprocess.run(["bindery-probe-where"], capture_output=True, text=True).stdout)
"""
CONDA_ENV = "/srv/conda/envs/notebook"


async def test_environment_yml_from_a_conda_channel_is_a_conda_environment_the_kernel_runs(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / "configs-environment-yml-conda"
    make_repo(
        repo,
        {
            "environment.yml": f"name: probe\nchannels: [{CHANNEL}]\ndependencies:\n"
            "  - python=3.11\n  - bindery-probe\n  - pip:\n    - pyfiglet==1.0.2\n",
        },
    )
    session = await launch_and_probe(http, stack, repo, CONDA_PROBE)
    found = lines(session.output)
    # The session's kernel is the environment's Python, from the channel.
    assert found.get("python") == f"{CONDA_ENV}/bin/python", session.output
    assert found.get("prefix") == CONDA_ENV
    assert found.get("variables") == f"{CONDA_ENV} {CONDA_ENV}"
    assert found.get("module") == (
        f"{CONDA_ENV}/lib/python3.11/site-packages/bindery_probe/__init__.py"
    )
    # The entry point runs; the file it reads had its prefix placeholder made the env's.
    assert found.get("entry") == f"bindery-probe {PROBE_VERSION} {CONDA_ENV}/share/bindery-probe"
    assert found.get("where") == CONDA_ENV
    assert f"4 conda packages solved from {CHANNEL}" in session.log, session.log


async def test_runtime_txt_asking_for_python_2_fails_naming_the_pythons_there(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    # No Python 3 is "nearest" to Python 2 code: refused whatever the fallback setting.
    repo = repos / "configs-runtime-27"
    make_repo(repo, {"runtime.txt": "python-2.7\n", "requirements.txt": "pyfiglet\n"})
    failed = await launch_failure(http, stack, repo)
    assert failed.get("reason") == "step_failed", failed
    assert "Python 2.7" in failed["message"], failed["message"]
    assert "available: 3.9, 3.11, 3.13" in failed["message"], failed["message"]


@pytest.mark.parametrize(
    ("files", "host"),
    [
        (
            {"Project.toml": '[deps]\nExample = "7876af07-990d-54b4-ab0e-23690620f79a"\n'},
            "julialang",
        ),
        ({"default.nix": "with import <nixpkgs> {}; hello\n"}, "nixos.org"),
    ],
    ids=["Project.toml", "default.nix"],
)
async def test_unreachable_ecosystems_fail_at_once_naming_the_host(
    stack: Stack, http: aiohttp.ClientSession, repos: Path, files: dict[str, str], host: str
) -> None:
    repo = repos / f"configs-missing-{next(iter(files)).replace('.', '-').lower()}"
    make_repo(repo, files)
    failed = await launch_failure(http, stack, repo)
    assert failed.get("reason") == "step_failed", failed
    assert host in failed["message"] and "no mirror" in failed["message"], failed["message"]


R_PROBE = f"""
library({R_PROBE_PACKAGE.name})
cat("answer", probe_answer(), "\\n")
cat("repos", getOption("repos"), "\\n")
"""


async def test_install_r_packages_work_in_the_sessions_r_kernel(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    """The stack's builder has a CRAN-like directory (tests/support/stack.py) with the probe."""
    repo = repos / "configs-install-r"
    # A comment of its own: its environment is built in this run, from the stack's mirror.
    install_r = f'# {uuid.uuid4().hex}\ninstall.packages("{R_PROBE_PACKAGE.name}")\n'
    make_repo(repo, {"install.R": install_r, "index.ipynb": notebook("1")})
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
    ready = events[-1]
    assert ready["phase"] == "ready", json.dumps(events[-5:], indent=1)
    try:
        kernel = await start_kernel(http, ready["url"], ready["token"], name="ir")
        outcome = await run_code(http, ready["url"], ready["token"], R_PROBE, kernel=kernel)
    finally:
        stop_session(ready["launch_id"])
    found = lines(outcome.output)
    assert found.get("answer", "").strip() == PROBE_ANSWER, ProbedSession(
        events, outcome.output
    ).log
    # The mirror directory was there for the build only: the session has a reachable default.
    assert found.get("repos", "").strip() == PUBLIC_CRAN, outcome.output


NIX_SHELL = """\
# A shell of builtins only: its variable names a store path built with the image.
let
  greeting = derivation {
    name = "greeting";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo hello from a nix build > $out" ];
  };
in derivation {
  name = "shell";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo unused > $out" ];
  GREETING = greeting;
}
"""

NIX_PROBE = """
import os
path = os.environ.get("GREETING", "")
print("store", path.startswith("/nix/store/"))
print("greeting", open(path).read().strip() if path else None)
"""


async def test_default_nix_shell_reaches_the_kernel(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    """With no Nix mirror configured, a default.nix of builtins only still builds; the session
    runs inside its nix-shell, so the kernel sees the shell's variables."""
    repo = repos / "configs-default-nix"
    make_repo(repo, {"default.nix": NIX_SHELL, "index.ipynb": notebook("1")})
    session = await launch_and_probe(http, stack, repo, NIX_PROBE)
    found = lines(session.output)
    assert found.get("store") == "True", session.output + session.log
    assert found.get("greeting") == "hello from a nix build", session.output
