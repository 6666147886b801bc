"""Start Bindery's five services as real processes against the real broker, registry and
podman, in a RabbitMQ virtual host and a podman instance label of their own, so the tests never
touch the stack `make up` runs. Every test in a run shares one started stack.

As under `make up`, each service connects as a RabbitMQ user of its own (bindery.bus.access),
only the services that need it get the session secret, and those that need no root run as the
unprivileged user `bindery`; the tests themselves use guest, as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bindery.bus.access import SESSION_SECRET_HOLDERS
from tests.support.condachannel import served_channel
from tests.support.cranmirror import make_cran_mirror
from tests.support.kernel import run_code
from tests.support.privatebroker import PrivateBroker

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("resolver", "builder", "scheduler", "culler", "archiver", "gateway")
# BINDERY_TEST_SLOT lets several test runs share this machine: each slot has its own ports,
# RabbitMQ virtual host and podman instance label.
SLOT = int(os.environ.get("BINDERY_TEST_SLOT", "0"))


@dataclass(frozen=True)
class Slot:
    """The ports, RabbitMQ virtual host and podman instance label of one started stack."""

    number: int

    @property
    def gateway_port(self) -> int:
        return 18585 + self.number * 20

    @property
    def health_ports(self) -> dict[str, int]:
        services = ("resolver", "builder", "scheduler", "culler", "archiver")
        return {service: self.gateway_port + 6 + index for index, service in enumerate(services)}

    @property
    def vhost(self) -> str:
        return f"bindery-test-{self.number}"

    @property
    def instance(self) -> str:
        return f"bindery-test-{self.number}"


GATEWAY_PORT = Slot(SLOT).gateway_port
HEALTH_PORTS = Slot(SLOT).health_ports
VHOST = Slot(SLOT).vhost
INSTANCE = Slot(SLOT).instance
# `make test` starts two podman nodes with separate image stores (BINDERY_NODE_COUNT=2).
NODE_COUNT = int(os.environ.get("BINDERY_NODE_COUNT", "2"))
NODES = {f"node-{n}": f"unix:///run/bindery/node-{n}.sock" for n in range(1, NODE_COUNT + 1)}
LOG_DIR = REPO / f".bindery/test-logs/slot-{SLOT}"


def nodes_setting(extra: Mapping[str, str]) -> str:
    """`BINDERY_NODES` for the shared nodes and `extra` (name -> URL: a test's own nodes)."""
    return ",".join(f"{name}={url}" for name, url in {**NODES, **extra}.items())


#: Per virtual host, the services' AMQP URLs (`<service>.url`), written by `fresh_vhost`.
AMQP_DIR = REPO / ".bindery/test-amqp"
#: The services that need no root, the user they run as and how they become it: those of
#: scripts/services.sh (UNPRIVILEGED, SERVICE_USER, AS_USER; tests/unit/test_service_users.py
#: checks that they agree), so the tests run them as production does.
SERVICE_USER = "bindery"
UNPRIVILEGED = ("resolver", "archiver")
AS_USER = (
    "setpriv",
    f"--reuid={SERVICE_USER}",
    f"--regid={SERVICE_USER}",
    "--init-groups",
    "--no-new-privs",
)


def service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise RuntimeError(f"no user {SERVICE_USER}: run scripts/install.sh") from None


def give_to_user(path: Path, *, directory: bool) -> None:
    """Make `path` (a directory and the files directly in it, or a file) the service user's."""
    user = service_user()
    if directory:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        for child in path.iterdir():
            if child.is_file() and not child.is_symlink():
                os.chown(child, user.pw_uid, user.pw_gid)
    else:
        path.touch()
    os.chown(path, user.pw_uid, user.pw_gid)


def rabbitmqctl(*args: str) -> None:
    subprocess.run([str(REPO / "scripts/infra.sh"), *args], check=True, capture_output=True)


def fresh_vhost(name: str) -> str:
    """The admin (guest) AMQP URL of virtual host `name`, emptied of whatever an earlier run
    left there, its topology declared and a user per service made (named `<name>-<service>`,
    so they never collide with the users of `make up`; their URLs: `service_urls(name)`)."""
    rabbitmqctl("vhost-delete", name)
    rabbitmqctl("vhost", name)
    rabbitmqctl("access", name, str(AMQP_DIR / name))
    return f"amqp://guest:guest@127.0.0.1:5672/{name}"


@contextlib.contextmanager
def own_vhost(name: str) -> Iterator[str]:
    """A test's own virtual host while the block runs (its admin URL, as `fresh_vhost`), deleted
    after it: the one way a test or fixture takes a vhost, so none outlives its tests."""
    try:
        yield fresh_vhost(name)
    finally:
        rabbitmqctl("vhost-delete", name)


def service_urls(vhost: str) -> dict[str, str]:
    """Each service's AMQP URL in `vhost`, as `fresh_vhost` made them."""
    return {
        service: (AMQP_DIR / vhost / f"{service}.url").read_text().strip() for service in SERVICES
    }


@dataclass
class Stack:
    env: dict[str, str]
    """What every service gets (BINDERY_AMQP_URL is guest's, for the tests' own buses)..."""
    log_dir: Path
    amqp_urls: dict[str, str] = field(default_factory=dict)
    """... but each service connects with its own user's URL from here, when it has one."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    slot: Slot = Slot(SLOT)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.slot.gateway_port}"

    def session_url(self, session: str) -> str:
        """Where a session is served: an origin of its own (BINDERY_SESSIONS_HOST)."""
        return f"http://{session}.localhost:{self.slot.gateway_port}/user/{session}/"

    def start(self, service: str) -> None:
        self.processes[service] = self.spawn(service, self.slot.health_ports.get(service))
        self.wait_healthy(service)

    def spawn(
        self, service: str, health_port: int | None, log_name: str = ""
    ) -> subprocess.Popen[bytes]:
        """A process of `service` as this stack runs it, answering health on `health_port`
        and logging to `<log_name or service>.log`; not waited for."""
        log = (self.log_dir / f"{log_name or service}.log").open("ab")
        env = dict(self.env)
        if service in self.amqp_urls:
            env["BINDERY_AMQP_URL"] = self.amqp_urls[service]
        if service not in SESSION_SECRET_HOLDERS:
            env.pop("BINDERY_SESSION_SECRET", None)
        if health_port is not None:
            env["BINDERY_HEALTH_PORT"] = str(health_port)
        command = [sys.executable, "-m", f"bindery.{service}"]
        if service in UNPRIVILEGED:
            # What it writes is given to the user first (scripts/services.sh: give_to_user).
            if service == "archiver":
                give_to_user(Path(env["BINDERY_ARCHIVE_DIR"]), directory=True)
            if env.get("BINDERY_TRACE_EXPORTER") == "file" and env.get("BINDERY_TRACE_FILE"):
                give_to_user(Path(env["BINDERY_TRACE_FILE"]), directory=False)
            env["HOME"] = service_user().pw_dir
            command = [*AS_USER, *command]
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def stop(self, service: str) -> None:
        proc = self.processes.pop(service)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def archived(self, launch_id: str) -> list[dict[str, Any]]:
        """The launch's lines in this stack's launch archive (one, once it has ended)."""
        return [
            record
            for path in (self.log_dir / "archive").glob("events-*.jsonl")
            for line in path.read_text().splitlines()
            if (record := json.loads(line))["launch_id"] == launch_id
        ]

    def health_url(self, service: str) -> str:
        if service == "gateway":
            return f"{self.gateway}/health"
        return f"http://127.0.0.1:{self.slot.health_ports[service]}/health"

    def wait_healthy(self, service: str, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            proc = self.processes[service]
            if proc.poll() is not None:
                raise RuntimeError(f"{service} exited {proc.returncode}: {self.log_tail(service)}")
            with suppress(OSError), urllib.request.urlopen(self.health_url(service), timeout=2):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{service} not healthy in {limit} s: {self.log_tail(service)}")

    def wait_active(self, service: str, limit: float = 60.0) -> None:
        """Wait until `service` says it is the active replica: subscribed, its state rebuilt. A
        restarted scheduler answers /health as a standby first, while it takes the lock,
        replays the event log and reconciles: launches sent then wait for all of that."""
        deadline = time.monotonic() + limit
        self.wait_healthy(service, limit)
        while time.monotonic() < deadline:
            with (
                suppress(OSError, ValueError),
                urllib.request.urlopen(self.health_url(service), timeout=2) as answer,
            ):
                if json.loads(answer.read()).get("role") == "active":
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{service} not active in {limit} s: {self.log_tail(service)}")

    def log_tail(self, service: str, lines: int = 40) -> str:
        path = self.log_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def restart(self, service: str) -> None:
        self.stop(service)
        self.start(service)

    @contextmanager
    def settings(self, service: str, **env: str) -> Iterator[None]:
        """Run `service` with `env` added to its settings for the block, then as before."""
        saved = dict(self.env)
        self.env.update(env)
        self.restart(service)
        try:
            yield
        finally:
            self.env.clear()
            self.env.update(saved)
            self.restart(service)


def stack_env(log_dir: Path, slot: Slot = Slot(SLOT), amqp_url: str = "") -> dict[str, str]:
    """`amqp_url`: the tests' own (admin) URL; the shared broker's virtual host of `slot` by
    default."""
    port = slot.gateway_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERY_")}
    env.update(
        {
            "BINDERY_PROFILE": "local",
            "BINDERY_INSTANCE": slot.instance,
            "BINDERY_AMQP_URL": amqp_url or f"amqp://guest:guest@127.0.0.1:5672/{slot.vhost}",
            "BINDERY_SESSION_SECRET": secrets.token_hex(32),
            "BINDERY_LOG_FORMAT": "json",
            "BINDERY_IMAGE_PREFIX": "bindery-test/",
            # Test runs share one podman storage: the builder must not prune the others' images.
            "BINDERY_PRUNE_INTERVAL": "0",
            # The gateway reports activity every second, so culling tests can use short limits.
            "BINDERY_ACTIVITY_FLUSH_INTERVAL": "1",
            "BINDERY_PORT": str(port),
            "BINDERY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # Every test launches from 127.0.0.1: one client whose launches are the whole suite's.
            # Tests of the per-client limits set their own (tests/e2e/test_client_limits.py).
            "BINDERY_MAX_LAUNCHES_PER_CLIENT": "100000",
            "BINDERY_LAUNCH_RATE_PER_MINUTE": "0",
            # Sessions on origins of their own, as under `make up` (tests/support/localhost.py).
            "BINDERY_SESSIONS_HOST": f"localhost:{port}",
            "BINDERY_CHECK_INTERVAL": "2",
            # A launch nobody watches is cancelled this soon (tests/e2e/test_abandoned_launches).
            "BINDERY_ABANDON_GRACE": "5",
            # No warm pool (on by default) unless a test asks for one: tests count the
            # containers and sessions their launches start.
            "BINDERY_WARM_POOL_SHARE": "0",
            "BINDERY_NODES": ",".join(f"{name}={url}" for name, url in NODES.items()),
            "BINDERY_ARCHIVE_DIR": str(log_dir / "archive"),
            # Every service appends its spans here, so a test can follow one launch's trace.
            "BINDERY_TRACE_EXPORTER": "file",
            "BINDERY_TRACE_FILE": str(log_dir / "traces.jsonl"),
        }
    )
    return env


def node_containers(url: str, check: bool = True, instance: str = INSTANCE) -> list[str]:
    """Ids of this stack's containers on the podman node at `url`."""
    return subprocess.run(
        ["podman", "--url", url, "ps", "-aq", "--filter", f"label=bindery.instance={instance}"],
        capture_output=True,
        text=True,
        check=check,
    ).stdout.split()


def remove_test_sessions(instance: str = INSTANCE) -> None:
    for url in NODES.values():
        ids = node_containers(url, check=False, instance=instance)
        if ids:
            subprocess.run(
                ["podman", "--url", url, "rm", "-f", "-t", "1", *ids],
                capture_output=True,
                check=False,
            )


def running_sessions(instance: str = INSTANCE) -> list[str]:
    return [cid for url in NODES.values() for cid in node_containers(url, instance=instance)]


def started_stack(
    log_dir: Path,
    slot: Slot = Slot(SLOT),
    broker: PrivateBroker | None = None,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """The stack of `slot`, on the shared broker, or on `broker` (one the test may restart);
    `settings` (BINDERY_* variables) on top of the tests' own, for every service from its
    start (more nodes than the shared ones: their sessions are the caller's to remove)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if broker is None:
        admin_url = fresh_vhost(slot.vhost)
        amqp_urls = service_urls(slot.vhost)
    else:
        admin_url, amqp_urls = broker.fresh_vhost(slot.vhost, AMQP_DIR / broker.node)
    remove_test_sessions(slot.instance)
    # The builder's conda channel alias is the test channel, which has only the channel
    # bindery-test: environment.yml files listing it take the conda route, the others (listing
    # conda-forge, or no channel: the default conda-forge) the PyPI route for an unreachable one.
    with served_channel(log_dir / "conda-channel") as channel:
        env = stack_env(log_dir, slot, admin_url)
        env["BINDERY_CONDA_CHANNEL_ALIAS"] = channel.alias
        env["BINDERY_CONDA_PKGS_DIR"] = str(log_dir / "conda-pkgs")
        # R repositories install from a CRAN-like directory holding the probe package.
        env["BINDERY_CRAN_MIRROR"] = str(make_cran_mirror(log_dir / "cran"))
        env.update(settings or {})
        stack = Stack(env, log_dir, amqp_urls=amqp_urls, slot=slot)
        try:
            for service in SERVICES:
                stack.start(service)
            yield stack
        finally:
            for service in list(stack.processes):
                stack.stop(service)
            remove_test_sessions(slot.instance)


def build_path(repo_url: str, ref: str) -> str:
    return f"/build/git/{quote(repo_url, safe='')}/{quote(ref, safe='')}"


async def launch_events(
    http: aiohttp.ClientSession, gateway: str, path: str
) -> AsyncIterator[dict[str, Any]]:
    """Follow a /build event stream the way BinderHub clients do, yielding each event."""
    async with http.get(gateway + path, headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data:"):
                event = json.loads(line[5:])
                yield event
                if event.get("phase") in {"ready", "failed"}:
                    return


async def launch(http: aiohttp.ClientSession, gateway: str, path: str) -> list[dict[str, Any]]:
    return [event async for event in launch_events(http, gateway, path)]


def launch_containers(launch_id: str, instance: str = INSTANCE) -> dict[str, list[str]]:
    """Ids of the containers a launch's session runs in, by podman node URL (one in all,
    unless it was started twice)."""
    return {
        url: subprocess.run(
            [
                "podman",
                "--url",
                url,
                "ps",
                "-aq",
                "--filter",
                f"label=bindery.instance={instance}",
                "--filter",
                f"label=bindery.launch-id={launch_id}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for url in NODES.values()
    }


def stop_session(launch_id: str) -> None:
    """Sessions hold a gigabyte each: stop one once probed, on whichever node it runs."""
    for url, ids in launch_containers(launch_id).items():
        if ids:
            subprocess.run(
                ["podman", "--url", url, "rm", "-f", "-t", "0", *ids],
                capture_output=True,
                check=False,
            )


@dataclass
class ProbedSession:
    """A launch's events and what a probe printed in its session's kernel."""

    events: list[dict[str, Any]]
    output: str

    @property
    def log(self) -> str:
        return "".join(str(event.get("message", "")) for event in self.events)

    @property
    def ready(self) -> dict[str, Any]:
        return self.events[-1]

    def printed_json(self) -> Any:
        """The probe's last line, which it printed as JSON."""
        return json.loads(self.output.strip().splitlines()[-1])


async def launch_and_probe(
    http: aiohttp.ClientSession, stack: Stack, repo: Path, probe: str
) -> ProbedSession:
    """Launch ``repo`` (a local git repository, at main), run ``probe`` in a kernel of the
    session, then stop the session."""
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
    ready = events[-1]
    assert ready["phase"] == "ready", json.dumps(events[-5:], indent=1)
    try:
        output = (await run_code(http, ready["url"], ready["token"], probe)).output
    finally:
        stop_session(ready["launch_id"])
    return ProbedSession(events, output)
