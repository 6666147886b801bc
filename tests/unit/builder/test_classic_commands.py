"""The base image's stand-ins for Notebook 6's `jupyter serverextension` and `jupyter nbextension`,
which postBuild scripts written for mybinder.org still call: the first enables and disables
server extensions in Jupyter Server's configuration as Notebook 6 did, the second succeeds saying
it did nothing. (tests/e2e/test_session_environment.py runs them in a real build and session.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bindery.builder.baseimage import CONTEXT_DIR


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A user config dir, an importable module `probe_ext`, and a `jupyter` that says how it
    was called."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "probe_ext.py").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "jupyter").write_text('#!/bin/sh\necho "called: $*"\n')
    (tmp_path / "bin" / "jupyter").chmod(0o755)
    return {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "PYTHONPATH": str(tmp_path / "modules"),
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }


def run(command: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The image runs it with the venv's Python (its #!); here the tests' Python stands in.
    interpreter = [sys.executable] if command == "jupyter-serverextension" else ["sh"]
    return subprocess.run(
        [*interpreter, str(CONTEXT_DIR / command), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def enabled(env: dict[str, str]) -> dict[str, bool]:
    config = json.loads(Path(env["JUPYTER_CONFIG_DIR"], "jupyter_server_config.json").read_text())
    extensions: dict[str, bool] = config["ServerApp"]["jpserver_extensions"]
    return extensions


def test_serverextension_enable_and_disable_write_jupyter_servers_config(
    env: dict[str, str],
) -> None:
    done = run("jupyter-serverextension", "enable", "--py", "probe_ext", "--user", env=env)
    assert done.returncode == 0, done.stderr
    assert enabled(env) == {"probe_ext": True}
    done = run("jupyter-serverextension", "disable", "probe_ext", "--user", env=env)
    assert done.returncode == 0, done.stderr
    assert enabled(env) == {"probe_ext": False}


def test_serverextension_refuses_a_module_that_is_not_installed(env: dict[str, str]) -> None:
    done = run("jupyter-serverextension", "enable", "--py", "absent.ext", "--user", env=env)
    assert done.returncode == 1
    assert "'absent.ext'" in done.stderr
    assert not Path(env["JUPYTER_CONFIG_DIR"]).exists()


def test_serverextension_list_is_jupyter_servers(env: dict[str, str]) -> None:
    done = run("jupyter-serverextension", "list", env=env)
    assert done.stdout == "called: server extension list\n"
    assert run("jupyter-serverextension", "enable", env=env).returncode == 2, "no name: usage"


def test_nbextension_succeeds_and_says_it_was_skipped(env: dict[str, str]) -> None:
    done = run("jupyter-nbextension", "enable", "--py", "widgetsnbextension", env=env)
    assert done.returncode == 0
    assert "enable --py widgetsnbextension: skipped" in done.stderr
    assert "Notebook 7" in done.stderr
