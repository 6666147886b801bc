"""Repositories written for mybinder.org, launched unchanged (issue 17, parts 6 and 7): a postBuild
that `pip install --user`s a tool a notebook then runs, a root .dockerignore listing binder/, the
BinderHub variables and REPO_DIR in the session, and BinderHub's legacy `/repo/...` links.
One small repository, one shared stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest

from tests.support.gitrepo import git, make_repo, notebook
from tests.support.stack import Stack, build_path, launch, launch_and_probe, stop_session

Launched = tuple[str, dict[str, str], dict[str, Any]]
"""The repository's URL, the ready event, and what the probe saw in the session."""

# What public Binder repositories do: a command-line tool installed for the user in postBuild,
# called from a notebook cell.
NOTEBOOK_CELL = "!cowsay -t 'hello from postBuild'"

PROBE = """
import json, os, shutil, subprocess
print(json.dumps({
    "env": {k: v for k, v in os.environ.items() if k.startswith("BINDER_") or k == "REPO_DIR"},
    "cwd": os.getcwd(),
    "tool": shutil.which("cowsay"),
    "tool_output": subprocess.run(["cowsay", "-t", "moo"], capture_output=True, text=True).stdout,
    "login_shell_tool": subprocess.run(
        ["bash", "-lc", "command -v cowsay"], capture_output=True, text=True
    ).stdout.strip(),
    "repo_bin": subprocess.run(
        ["bash", "-lc", "repo-tool"], capture_output=True, text=True
    ).stdout.strip(),
    "files": sorted(os.listdir(os.environ["REPO_DIR"])),
    "binder_files": sorted(os.listdir(os.path.join(os.environ["REPO_DIR"], "binder"))),
}))
"""


@pytest.fixture(scope="module")
async def launched(stack: Stack, http: aiohttp.ClientSession, repos: Path) -> Launched:
    repo = repos / "binder-conventions"
    make_repo(
        repo,
        {
            # Written for Docker users of the repository; repo2docker reads binder/'s own.
            ".dockerignore": "binder/\n",
            "binder/.dockerignore": "# not for the image\nscratch/\n",
            "binder/requirements.txt": "tabulate\n",
            "binder/postBuild": "#!/bin/bash\nset -euo pipefail\npip install --user cowsay\n",
            "scratch/big.csv": "a,b\n1,2\n",
            # A repository's own .local/bin is on PATH too.
            ".local/bin/repo-tool": "#!/bin/sh\necho repo-tool-ran\n",
            "index.ipynb": notebook(NOTEBOOK_CELL),
        },
    )
    git(repo, "update-index", "--chmod=+x", ".local/bin/repo-tool")
    git(repo, "commit", "-qm", "repo-tool is executable")
    session = await launch_and_probe(http, stack, repo, PROBE)
    return f"file://{repo}", session.ready, session.printed_json()


async def test_a_tool_pip_installed_for_the_user_in_postbuild_runs(
    launched: Launched,
) -> None:
    _, _, seen = launched
    assert seen["tool"] == "/home/jovyan/.local/bin/cowsay", seen
    assert "moo" in str(seen["tool_output"]), seen
    # Terminals and the start script run in login shells, whose PATH Debian resets.
    assert seen["login_shell_tool"] == "/home/jovyan/.local/bin/cowsay", seen
    assert seen["repo_bin"] == "repo-tool-ran", "$REPO_DIR/.local/bin is on PATH"


async def test_a_root_dockerignore_listing_binder_does_not_hide_its_configuration(
    launched: Launched,
) -> None:
    _, _, seen = launched
    assert {".dockerignore", "binder", "index.ipynb"} <= set(seen["files"]), seen
    assert "postBuild" in seen["binder_files"], seen
    # binder/.dockerignore is the one repo2docker reads: what it lists stays out.
    assert "scratch" not in seen["files"], seen


async def test_the_session_has_binderhubs_variables_and_repo_dir(
    launched: Launched,
) -> None:
    url, ready, seen = launched
    env = seen["env"]
    assert isinstance(env, dict)
    sha = git(Path(url.removeprefix("file://")), "rev-parse", "main")
    # The request as the link had it (aiohttp sends `:` unencoded): BinderHub's spec as given.
    request = env["BINDER_REQUEST"]
    assert unquote(request) == f"v2/git/{url}/main", request
    assert env == {
        "BINDER_LAUNCH_HOST": ready["binder_launch_host"],
        "BINDER_REPO_URL": url,
        "BINDER_REF_URL": url,  # a plain git repository has no page per commit
        "BINDER_REQUEST": ready["binder_request"],
        "BINDER_PERSISTENT_REQUEST": f"{request.rsplit('/', 1)[0]}/{sha}",
        "REPO_DIR": "/home/jovyan",
    }
    assert env["BINDER_LAUNCH_HOST"].endswith("/")
    assert ready["binder_persistent_request"] == env["BINDER_PERSISTENT_REQUEST"]
    assert seen["cwd"] == "/home/jovyan", "sessions start in the repository"


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/repo/binder-examples/requirements", "/v2/gh/binder-examples/requirements/HEAD"),
        (
            "/repo/binder-examples/requirements/index.ipynb?filepath=a.ipynb",
            "/v2/gh/binder-examples/requirements/HEAD?filepath=a.ipynb&urlpath=index.ipynb",
        ),
    ],
)
async def test_legacy_repo_links_lead_to_the_github_launch_page(
    stack: Stack, http: aiohttp.ClientSession, path: str, location: str
) -> None:
    async with http.get(stack.gateway + path, allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (302, location)
    async with http.get(stack.gateway + location) as resp:
        assert resp.status == 200 and "launch" in (await resp.text()).lower()


async def test_a_voila_link_renders_the_notebook_when_the_repository_installs_voila(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    """`?urlpath=voila/render/<notebook>`, as dashboards on mybinder.org are shared."""
    repo = repos / "binder-voila"
    make_repo(
        repo,
        {
            "requirements.txt": "voila\n",
            # Split so that only the executed output, never the source, holds the marker.
            "app.ipynb": notebook("print('voila-' + 'rendered')"),
        },
    )
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
    ready = events[-1]
    assert ready["phase"] == "ready", json.dumps(events[-5:], indent=1)
    try:
        headers = {"Authorization": f"token {ready['token']}"}
        async with http.get(f"{ready['url']}voila/render/app.ipynb", headers=headers) as resp:
            page = await resp.text()
            assert resp.status == 200, page[-2000:]
        assert "voila-rendered" in page, page[-2000:]
    finally:
        stop_session(ready["launch_id"])
