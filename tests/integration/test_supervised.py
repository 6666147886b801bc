"""`make up`'s supervisor, for real: scripts/services.sh brings a throwaway instance up under
supervisord (its own state directory, ports, virtual host and instance label, so the stack on
8585 and the test stacks are never touched); a service killed with SIGKILL comes back healthy by
itself; each runs as its user with the secret only where it belongs; `up` again changes nothing;
`down` stops it all.

Run alone: `.venv/bin/pytest -m supervised`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from bindery.bus.access import SESSION_SECRET_HOLDERS
from tests.support.eventually import eventually
from tests.support.stack import NODES, REPO, SERVICE_USER, SERVICES, SLOT, UNPRIVILEGED, rabbitmqctl

pytestmark = pytest.mark.supervised

#: Apart from the test stacks' ports (18585 + 20 * slot, up to +19).
GATEWAY_PORT = 28585 + SLOT * 20
VHOST = f"bindery-supervised-{SLOT}"
INSTANCE = f"bindery-supervised-{SLOT}"
#: Under the checkout, as `make up`'s .bindery: the unprivileged services must reach it.
STATE = REPO / f".bindery/test-supervised/slot-{SLOT}"
RESTART_WITHIN = 60.0


@dataclass
class Instance:
    env: dict[str, str]

    def services_sh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / "scripts/services.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def pid(self, service: str) -> int:
        """The service's pid as supervisord knows it (0 while it is not running)."""
        answer = subprocess.run(
            ["supervisorctl", "-c", str(STATE / "supervisor/supervisord.conf"), "pid", service],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return int(answer) if answer.isdigit() else 0

    def health_url(self, service: str) -> str:
        if service == "gateway":
            return f"http://127.0.0.1:{GATEWAY_PORT}/health"
        return f"http://127.0.0.1:{GATEWAY_PORT + 6 + SERVICES.index(service)}/health"

    def healthy(self, service: str) -> bool:
        with suppress(OSError), urllib.request.urlopen(self.health_url(service), timeout=2):
            return True
        return False


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    rabbitmqctl("vhost-delete", VHOST)
    rabbitmqctl("vhost", VHOST)
    settings = {
        "BINDERY_PROFILE": "local",
        "BINDERY_SESSION_SECRET": secrets.token_hex(32),
        "BINDERY_INSTANCE": INSTANCE,
        "BINDERY_PORT": str(GATEWAY_PORT),
        "BINDERY_PUBLIC_URL": f"http://127.0.0.1:{GATEWAY_PORT}",
        "BINDERY_NODES": ",".join(f"{name}={url}" for name, url in NODES.items()),
        "BINDERY_IMAGE_PREFIX": "bindery-test/",
        # Test runs share one podman storage: the builder must not prune the others' images.
        "BINDERY_PRUNE_INTERVAL": "0",
        "BINDERY_ARCHIVE_DIR": str(STATE / "archive"),
        "BINDERY_CLIENT_LOG_DIR": "",
    }
    env_file = STATE / "env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    env_file.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("BINDERY_")}
    env.update({"BINDERY_STATE_DIR": str(STATE), "BINDERY_VHOST": VHOST})
    started = Instance(env)
    up = started.services_sh("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "all services healthy" in up.stdout
        yield started
    finally:
        down = started.services_sh("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (STATE / "supervisor/supervisor.sock").exists() or started.pid("gateway") == 0
        assert not started.healthy("gateway")
        rabbitmqctl("vhost-delete", VHOST)


@pytest.mark.parametrize("service", ["builder", "resolver"])
async def test_a_killed_service_comes_back_healthy(instance: Instance, service: str) -> None:
    """The builder (root) and the resolver (as `bindery`): SIGKILL, no clean-up of any kind."""
    killed = instance.pid(service)
    assert killed and instance.healthy(service)
    os.kill(killed, signal.SIGKILL)

    def back() -> bool:
        return instance.pid(service) not in (0, killed) and instance.healthy(service)

    await eventually(
        lambda: asyncio.to_thread(back),
        within=RESTART_WITHIN,
        every=0.2,
        what=f"{service} restarted and healthy",
    )
    status = await asyncio.to_thread(instance.services_sh, "status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_each_service_runs_as_its_user_with_only_its_secret(instance: Instance) -> None:
    unprivileged = pwd.getpwnam(SERVICE_USER).pw_uid
    for service in SERVICES:
        pid = instance.pid(service)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {item.partition(b"=")[0].decode() for item in environ}
        assert ("BINDERY_SESSION_SECRET" in names) == (service in SESSION_SECRET_HOLDERS), service
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
        expected = unprivileged if service in UNPRIVILEGED else 0
        assert {int(uid) for uid in uids} == {expected}, service
        assert (STATE / f"logs/{service}.log").stat().st_size > 0, service


def test_up_again_keeps_what_runs(instance: Instance) -> None:
    before = {service: instance.pid(service) for service in SERVICES}
    again = instance.services_sh("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {service: instance.pid(service) for service in SERVICES} == before
