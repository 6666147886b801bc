"""Sessions get the operator's network settings (issue 17, part 4): a notebook's `%pip install`
works against the package index the scheduler was given, over plain http and over TLS with the
operator's CA bundle, and fails without that bundle.

The index is tests.support.pypiindex, served inside a network namespace of the test's own
(tests.support.lan) on its "public" documentation address, port 443 (plain http too: the LAN's
token server holds port 80, and the rules open tcp ports, not protocols): where the sessions'
network rules (scripts/isolation.sh) let them go, as they would a mirror on the internet. No
packet leaves the machine. The scheduler is restarted with the settings for each test
(Stack.settings); the repository is the same small one each time, so only the first launch builds.
"""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_builder_configs import lines
from tests.support.gitrepo import make_repo
from tests.support.lan import Lan, lan
from tests.support.pypiindex import ANSWER, NAME
from tests.support.stack import REPO, Stack, launch_and_probe

# What a notebook cell does: IPython's %pip installs into the kernel's own environment.
PROBE = f"""
get_ipython().run_line_magic("pip", "install --no-cache-dir --disable-pip-version-check {NAME}")
import importlib, os
print("index", os.environ.get("PIP_INDEX_URL"))
try:
    print("answer", importlib.import_module("bindery_index_probe").ANSWER)
except ImportError as e:
    print("answer", "missing", e)
"""


@pytest.fixture(scope="module")
def the_lan() -> Iterator[Lan]:
    with lan() as made:
        yield made


@pytest.fixture(scope="module")
def repo(repos: Path) -> Path:
    path = repos / "session-network"
    make_repo(path, {"README.md": "pip install from a notebook\n"})
    return path


@contextlib.contextmanager
def index_in(the_lan: Lan, port: int, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """The probe index on the LAN's public address; yields its URL."""
    cmd = ["ip", "netns", "exec", the_lan.namespace, sys.executable, "-m"]
    cmd += ["tests.support.pypiindex", the_lan.public, str(port), *map(str, tls or ())]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 20)
        assert readable and proc.stdout.readline().startswith("ready"), proc.poll()
        scheme = "https" if tls else "http"
        yield f"{scheme}://{the_lan.public}:{port}/simple"
    finally:
        proc.terminate()
        proc.wait(10)


def certificates(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate it signed for ``address``:
    (CA bundle, certificate, key)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(f"subjectAltName=IP:{address}\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=bindery-test-ca",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", f"/CN={address}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", extensions],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    ca.chmod(0o644)  # the session (uid 1000) reads it through its bind mount
    return ca, cert, key


async def test_pip_in_a_notebook_installs_from_the_operators_plain_http_index(
    stack: Stack, http: aiohttp.ClientSession, the_lan: Lan, repo: Path
) -> None:
    with (
        index_in(the_lan, 443) as url,
        stack.settings("scheduler", BINDERY_INDEX_URL=url),
    ):
        session = await launch_and_probe(http, stack, repo, PROBE)
    found = lines(session.output)
    assert found.get("index") == url, session.output
    assert found.get("answer") == ANSWER, session.output


async def test_pip_in_a_notebook_trusts_the_operators_ca_bundle(
    stack: Stack, http: aiohttp.ClientSession, the_lan: Lan, repo: Path, tmp_path: Path
) -> None:
    ca, cert, key = certificates(tmp_path, the_lan.public)
    with index_in(the_lan, 443, (cert, key)) as url:
        with stack.settings("scheduler", BINDERY_INDEX_URL=url, BINDERY_CA_BUNDLE=str(ca)):
            trusted = await launch_and_probe(http, stack, repo, PROBE)
        # Control: the same index with the host's bundle only, which lacks the test's CA.
        with stack.settings("scheduler", BINDERY_INDEX_URL=url):
            untrusted = await launch_and_probe(http, stack, repo, PROBE)
    assert lines(trusted.output).get("answer") == ANSWER, trusted.output
    assert lines(untrusted.output).get("answer", "").startswith("missing"), untrusted.output
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.output, untrusted.output


async def test_an_index_with_credentials_never_reaches_a_session(
    stack: Stack, http: aiohttp.ClientSession, the_lan: Lan, repo: Path
) -> None:
    url = f"http://reader:s3cret-of-the-operator@{the_lan.public}:80/simple"
    with stack.settings("scheduler", BINDERY_INDEX_URL=url):
        session = await launch_and_probe(
            http, stack, repo, "import os; print(sorted(os.environ.items()))"
        )
        log = stack.log_tail("scheduler", 400)
    assert "s3cret-of-the-operator" not in session.output
    assert the_lan.public not in session.output
    assert "sessions.index_withheld" in log
