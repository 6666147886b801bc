"""Build network = session network (scripts/isolation.sh), tried for real.

Sessions (containers on podman's bridges, started as the scheduler starts them) and builds
(processes of the build sandbox user, rootless podman's build steps and `ADD <url>` fetches)
reach the internet on the allowed ports only, and nothing on this host or its LAN; the build
user reaches the local registry from the registry cgroup alone.

The LAN and the internet are stand-ins made by tests.support.lan: a network namespace holding a
private host (10.123.N.2, fd12:3456:N::2) and a "public" one on documentation addresses
(198.51.100.N, 2001:db8:1:N::2) that only this machine's routes lead to; nothing leaves the
machine. Every check reads a token out of an HTTP reply (this machine's outbound TCP is answered
by an intercepting proxy, so a connection opening proves nothing), and every refusal is checked
against a control: root on the host gets the same token from the same URL.

Needs root, the rules up (`scripts/infra.sh up` runs `scripts/isolation.sh up`), the registry
and a local image with bash. The build user is scripts/install.sh's; where it is missing the
tests make it for the session (and remove it afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bindery.builder.sandbox import REGISTRY_CGROUP, Sandbox, join_registry_cgroup
from tests.support.lan import Lan, lan, token_server

REPO = Path(__file__).resolve().parents[2]
ISOLATION = REPO / "scripts" / "isolation.sh"
REGISTRY = os.environ.get("BINDERY_REGISTRY", "127.0.0.1:5000")
BUILD_USER = os.environ.get("BINDERY_BUILD_USER", "bindery-build")
IMAGES = ("localhost/bindery-rootfs:bookworm", "localhost/bindery-base")
TEST_LABEL = "bindery.test=security-network"
CURL_SECONDS = "10"

# An HTTP GET in bash alone (the images have neither curl nor wget): prints the reply.
HTTP_GET = (
    'exec 3<>"/dev/tcp/$1/$2" || exit 7; '
    'printf "GET / HTTP/1.0\\r\\nHost: bindery-test\\r\\n\\r\\n" >&3; cat <&3'
)

# One datagram, in bash: prints the answer (the LAN's UDP server sends its token back). dd reads
# it whole; bash's read would take one byte of it and lose the rest.
UDP_EXCHANGE = (
    'exec 3<>"/dev/udp/$1/$2" || exit 7; printf q >&3; timeout 3 dd bs=2048 count=1 status=none <&3'
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network isolation tests need root")


def run(
    *cmd: str,
    check: bool = True,
    timeout: float | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=timeout, preexec_fn=preexec_fn
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out


def fetch(
    url: str,
    *,
    as_user: tuple[int, int] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> str:
    """What curl gets from ``url`` (its error message when it gets nothing), as root or as
    the uid/gid ``as_user``."""
    cmd = ["curl", "-sS", "-m", CURL_SECONDS, "--noproxy", "*", url]
    if as_user:
        uid, gid = as_user
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]
    out = run(*cmd, check=False, preexec_fn=preexec_fn)
    return out.stdout + out.stderr


def exchange(address: str, port: int, *, as_user: tuple[int, int] | None = None) -> str:
    """The answer to one UDP datagram (or the error), as root or as the uid/gid ``as_user``."""
    cmd = ["timeout", CURL_SECONDS, "bash", "-c", UDP_EXCHANGE, "_", address, str(port)]
    if as_user:
        uid, gid = as_user
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]
    out = run(*cmd, check=False)
    return out.stdout + out.stderr


def nameservers() -> list[str]:
    lines = Path("/etc/resolv.conf").read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith("nameserver ")]


def http_url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}/" if ":" in address else f"http://{address}:{port}/"


def host_addresses(family: str) -> list[str]:
    """This host's own global addresses (``-4`` or ``-6``)."""
    out = run("ip", "-j", family, "addr", "show", "scope", "global").stdout
    return [
        a["local"] for link in json.loads(out) for a in link.get("addr_info", []) if "local" in a
    ]


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def isolation_up() -> None:
    out = run(str(ISOLATION), "status", check=False)
    if out.returncode != 0:
        pytest.fail(f"isolation is not on (scripts/infra.sh up turns it on):\n{out.stdout}")


@pytest.fixture
def the_lan() -> Iterator[Lan]:
    with lan() as made:
        # Control: the LAN is up and this host (root) reaches every host of it.
        for address in (made.private, made.private6, made.public, made.public6):
            assert made.token in fetch(made.url(address)), address
        yield made


@dataclass(frozen=True)
class Session:
    name: str

    def get(self, address: str, port: int) -> str:
        """The reply (or the error) the session gets for GET http://address:port/."""
        out = run(
            *("podman", "exec", self.name, "timeout", CURL_SECONDS, "bash", "-c", HTTP_GET),
            *("_", address, str(port)),
            check=False,
        )
        return out.stdout + out.stderr

    def exchange(self, address: str, port: int) -> str:
        """The answer to one UDP datagram from the session (or the error)."""
        out = run(
            *("podman", "exec", self.name, "timeout", CURL_SECONDS, "bash", "-c", UDP_EXCHANGE),
            *("_", address, str(port)),
            check=False,
        )
        return out.stdout + out.stderr


def _sweep_leftovers() -> None:
    """Containers and networks of earlier runs of this module whose process is gone."""
    names = run("podman", "ps", "-a", "--filter", f"label={TEST_LABEL}", "--format",
                "{{.Names}}", check=False).stdout.split()  # fmt: skip
    names += [
        n
        for n in run("podman", "network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        if n.startswith("bindery-testnet-")
    ]
    for name in names:
        pid = name.rsplit("-", 2)[-2] if name.count("-") >= 3 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            run("podman", "rm", "-f", "-t", "0", name, check=False)
            run("podman", "network", "rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def session_image() -> Iterator[str]:
    """An image with bash in root's store (the sessions' node): the rootfs or the base image;
    copied from the build sandbox's store (and removed afterwards) when root has neither."""
    listed = run("podman", "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for wanted in IMAGES:
        for image in listed:
            if image == wanted or image.startswith(wanted + ":"):
                yield image
                return
    sandbox = Sandbox(BUILD_USER)
    image = IMAGES[0]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "image.tar"
        with archive.open("wb") as out:
            saved = subprocess.run(sandbox.podman("save", image), stdout=out, check=False)
        if saved.returncode != 0:
            pytest.fail(f"no image with bash in any store: run scripts/base-image.sh ({image})")
        run("podman", "load", "-i", str(archive))
    try:
        yield image
    finally:
        run("podman", "rmi", "-f", image, check=False)


@contextlib.contextmanager
def session_on(network: str, image: str) -> Iterator[Session]:
    """A session container on ``network``, with the scheduler's options
    (bindery.runtimes.podman: uid 1000, every capability dropped, no new privileges)."""
    name = f"bindery-testnet-{os.getpid()}-{secrets.token_hex(4)}"
    run(
        *("podman", "run", "-d", "--name", name, "--network", network, "--label", TEST_LABEL),
        *("--user", "1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
        *("--memory", "256m", "--pids-limit", "128"),
        *(image, "sleep", "infinity"),
    )
    try:
        yield Session(name)
    finally:
        run("podman", "rm", "-f", "-t", "0", name, check=False)


@pytest.fixture(scope="module")
def session(session_image: str) -> Iterator[Session]:
    """A session on podman's default network (podman0), as the scheduler starts them."""
    _sweep_leftovers()
    with session_on("podman", session_image) as made:
        yield made


@pytest.fixture(scope="module")
def session6(session_image: str) -> Iterator[tuple[Session, str]]:
    """A session on a dual-stack podman network of the test's own (podman0 has no IPv6): the
    ip6tables rules at work. Yields it and its bridge's IPv6 gateway."""
    _sweep_leftovers()
    forwarding = Path("/proc/sys/net/ipv6/conf/all/forwarding")
    before = forwarding.read_text()
    name = f"bindery-testnet-{os.getpid()}-{secrets.token_hex(4)}"
    run("podman", "network", "create", "--ipv6", name)
    try:
        (detail,) = json.loads(run("podman", "network", "inspect", name).stdout)
        assert detail["network_interface"].startswith("podman"), detail  # a session bridge
        gateway6 = next(s["gateway"] for s in detail["subnets"] if ":" in s["subnet"])
        with session_on(name, session_image) as made:
            yield made, gateway6
    finally:
        run("podman", "network", "rm", "-f", name, check=False)
        # netavark turned IPv6 forwarding on for the network; give back what was there unless
        # another IPv6 network still needs it.
        others = json.loads(run("podman", "network", "ls", "--format", "json").stdout or "[]")
        if before.strip() == "0" and not any(n.get("ipv6_enabled") for n in others):
            forwarding.write_text(before)


@pytest.fixture(scope="module")
def build_user() -> Iterator[tuple[int, int]]:
    """The build sandbox user's uid and gid. scripts/install.sh creates it in production; when
    it is missing here it is made for these tests (a system user with subordinate ids, as
    rootless podman needs) and removed afterwards, the rules following it both times."""
    try:
        account = pwd.getpwnam(BUILD_USER)
    except KeyError:
        run("useradd", "--system", "--add-subids-for-system", "--user-group",
            "--no-create-home", "--shell", "/usr/sbin/nologin", BUILD_USER)  # fmt: skip
        try:
            run(str(ISOLATION), "up")
            account = pwd.getpwnam(BUILD_USER)
            yield account.pw_uid, account.pw_gid
        finally:
            run("userdel", BUILD_USER, check=False)
            run(str(ISOLATION), "up", check=False)
        return
    yield account.pw_uid, account.pw_gid


@pytest.fixture(scope="module")
def subordinate_user(build_user: tuple[int, int]) -> tuple[int, int]:
    """A uid/gid of the build user's subordinate range: what a build step's users are on the
    host (in a `--network host` step they would be in this network namespace)."""
    for line in Path("/etc/subuid").read_text().splitlines():
        name, first, count = line.split(":")
        if name in (BUILD_USER, str(build_user[0])) and int(count) > 1000:
            return int(first) + 999, int(first) + 999  # uid 1000 of a build step, say
    pytest.fail(f"{BUILD_USER} has no subordinate uids in /etc/subuid")


@pytest.fixture
def loopback_server() -> Iterator[tuple[str, int]]:
    """A token server on this host's loopback, IPv4 and IPv6 (``::`` takes both)."""
    with token_server("::") as served:
        token, port = served
        for url in (f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/"):
            assert token in fetch(url), url  # control: root reaches it
        yield served


@pytest.fixture(scope="module")
def registry() -> str:
    reply = fetch(f"http://{REGISTRY}/v2/")
    if reply.strip() != "{}":
        pytest.fail(f"no registry answers http://{REGISTRY}/v2/ (scripts/infra.sh up): {reply}")
    return REGISTRY


# --- (a) sessions -------------------------------------------------------------------------
def test_session_reaches_a_public_address_on_an_allowed_port(
    session: Session, the_lan: Lan
) -> None:
    assert the_lan.token in session.get(the_lan.public, 80)


def test_session_is_refused_a_port_not_allowed(session: Session, the_lan: Lan) -> None:
    reply = session.get(the_lan.public, 8080)
    assert the_lan.token not in reply
    assert "refused" in reply  # at once, not by a timeout


def test_session_cannot_reach_a_lan_host(session: Session, the_lan: Lan) -> None:
    for address in (the_lan.private, the_lan.private6):
        for port in (80, 8080):
            assert the_lan.token not in session.get(address, port), (address, port)


def test_session_cannot_reach_this_host(session: Session, the_lan: Lan) -> None:
    """A server on all of this host's addresses, as RabbitMQ's default listener would be:
    through the bridge's gateway or any other address of the host, the session gets nothing."""
    with token_server("::") as (token, port):
        targets = ["10.88.0.1", *host_addresses("-4"), *host_addresses("-6")]
        assert token in fetch(http_url("10.88.0.1", port))  # control: it answers there
        for address in targets:
            assert token not in session.get(address, port), address
    assert "{}" not in session.get("10.88.0.1", int(REGISTRY.rsplit(":", 1)[1]))


def test_ipv6_session_reaches_the_public_address_on_an_allowed_port_only(
    session6: tuple[Session, str], the_lan: Lan
) -> None:
    session, _ = session6
    assert the_lan.token in session.get(the_lan.public6, 80)
    assert the_lan.token not in session.get(the_lan.public6, 8080)


def test_ipv6_session_cannot_reach_a_lan_host_or_this_host(
    session6: tuple[Session, str], the_lan: Lan
) -> None:
    session, gateway6 = session6
    assert the_lan.token not in session.get(the_lan.private6, 80)
    assert the_lan.token not in session.get(the_lan.private, 80)
    with token_server("::") as (token, port):
        for address in (gateway6, *host_addresses("-6")):
            assert token in fetch(http_url(address, port)), address  # control
            assert token not in session.get(address, port), address


def test_session_sends_dns_to_the_configured_nameservers_only(
    session: Session, the_lan: Lan
) -> None:
    """Port 53 elsewhere, on the LAN or on the internet, is refused (the nameservers' own
    exception is checked in the rules: they are off this machine, where tests send nothing)."""
    for address in (the_lan.private, the_lan.public):
        assert the_lan.token in exchange(address, 53)  # control: it answers
        assert the_lan.token not in session.exchange(address, 53), address


# --- (b) builds ---------------------------------------------------------------------------
def test_build_user_reaches_public_addresses_on_allowed_ports_only(
    build_user: tuple[int, int], the_lan: Lan
) -> None:
    for address in (the_lan.public, the_lan.public6):
        assert the_lan.token in fetch(the_lan.url(address), as_user=build_user), address
        assert the_lan.token not in fetch(the_lan.url(address, 8080), as_user=build_user)


def test_build_user_cannot_reach_the_lan_or_loopback(
    build_user: tuple[int, int], the_lan: Lan, loopback_server: tuple[str, int]
) -> None:
    for address in (the_lan.private, the_lan.private6):
        assert the_lan.token not in fetch(the_lan.url(address), as_user=build_user), address
    token, port = loopback_server
    for host in ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "localhost"):
        assert token not in fetch(f"http://{host}:{port}/", as_user=build_user), host


def test_build_steps_subordinate_uids_meet_the_same_rules(
    subordinate_user: tuple[int, int], the_lan: Lan, loopback_server: tuple[str, int]
) -> None:
    assert the_lan.token in fetch(the_lan.url(the_lan.public), as_user=subordinate_user)
    assert the_lan.token not in fetch(the_lan.url(the_lan.private), as_user=subordinate_user)
    token, port = loopback_server
    assert token not in fetch(f"http://127.0.0.1:{port}/", as_user=subordinate_user)


def test_build_user_sends_dns_to_the_configured_nameservers_only(
    build_user: tuple[int, int], the_lan: Lan
) -> None:
    for address in (the_lan.private, the_lan.public, the_lan.private6, the_lan.public6):
        assert the_lan.token in exchange(address, 53)  # control
        assert the_lan.token not in exchange(address, 53, as_user=build_user), address


@pytest.mark.parametrize("family", ["4", "6"])
def test_dns_to_the_nameservers_comes_before_the_private_ranges(family: str) -> None:
    """resolv.conf's nameservers (here a private address) stay reachable on 53 alone, by a
    rule ahead of every refusal in the chain sessions and builds share."""
    tool = "iptables" if family == "4" else "ip6tables"
    rules = run(tool, "-S", "BINDERY-EGRESS").stdout.splitlines()
    first_refusal = next(i for i, rule in enumerate(rules) if "BINDERY-REJECT" in rule)
    for ns in (n for n in nameservers() if (":" in n) == (family == "6")):
        suffix = "32" if family == "4" else "128"
        for proto in ("udp", "tcp"):
            allow = f"-A BINDERY-EGRESS -d {ns}/{suffix} -p {proto} -m {proto} --dport 53 -j RETURN"
            assert allow in rules[:first_refusal], (allow, rules)


def _in_registry_cgroup() -> None:
    join_registry_cgroup()
    # Without the group the test would prove nothing: fail loudly in the child.
    if f"0::/{REGISTRY_CGROUP}\n" not in Path("/proc/self/cgroup").read_text():
        raise RuntimeError(f"not in cgroup {REGISTRY_CGROUP}")


def test_registry_only_from_the_registry_cgroup(
    build_user: tuple[int, int], registry: str, the_lan: Lan, loopback_server: tuple[str, int]
) -> None:
    url = f"http://{registry}/v2/"
    assert fetch(url, as_user=build_user).strip() != "{}"
    inside = _in_registry_cgroup
    assert fetch(url, as_user=build_user, preexec_fn=inside).strip() == "{}"
    # The exception is the registry's port alone.
    token, port = loopback_server
    assert token not in fetch(f"http://127.0.0.1:{port}/", as_user=build_user, preexec_fn=inside)
    lan_reply = fetch(the_lan.url(the_lan.private), as_user=build_user, preexec_fn=inside)
    assert the_lan.token not in lan_reply


@pytest.fixture(scope="module")
def sandbox(build_user: tuple[int, int]) -> Sandbox:
    sandbox = Sandbox(BUILD_USER)
    if not sandbox.home.is_dir():
        pytest.skip(f"{BUILD_USER} has no home for rootless podman (scripts/install.sh makes it)")
    sandbox.prepare()
    exists = subprocess.run(sandbox.podman("image", "exists", IMAGES[0]), check=False)
    if exists.returncode != 0:
        pytest.fail(f"no {IMAGES[0]} in the build sandbox's store: run scripts/base-image.sh")
    return sandbox


def _build(sandbox: Sandbox, containerfile: str) -> tuple[int, str]:
    context = Path(tempfile.mkdtemp(prefix="bindery-testnet-", dir=sandbox.tmp))
    try:
        (context / "Containerfile").write_text(containerfile)
        sandbox.hand_over(context)
        out = run(
            *sandbox.podman("build", "--no-cache", "--pull=never", "--rm", str(context)),
            check=False,
            timeout=300,
        )
        return out.returncode, out.stdout + out.stderr
    finally:
        shutil.rmtree(context, ignore_errors=True)
        run(*sandbox.podman("image", "prune", "-f", "--filter", "label=" + TEST_LABEL), check=False)


def test_rootless_build_steps_and_add_urls_meet_the_same_rules(
    sandbox: Sandbox, the_lan: Lan
) -> None:
    """`RUN` (slirp4netns) and `ADD <url>` (podman itself) of a real rootless build."""
    base = f"FROM {IMAGES[0]}\nLABEL {TEST_LABEL}\n"

    def step(address: str, port: int) -> str:
        return f"RUN bash -c '{HTTP_GET}' _ {address} {port} || true\n"

    rc, log = _build(sandbox, base + step(the_lan.public, 80))
    assert rc == 0 and the_lan.token in log, log[-2000:]
    for address, port in ((the_lan.private, 80), (the_lan.public, 8080), ("10.0.2.2", 5000)):
        rc, log = _build(sandbox, base + step(address, port))
        assert rc == 0 and the_lan.token not in log and "refused" in log, (address, log[-2000:])

    rc, log = _build(
        sandbox, base + f"ADD {the_lan.url(the_lan.public)} /fetched\nRUN cat /fetched\n"
    )
    assert rc == 0 and the_lan.token in log, log[-2000:]
    for url in (the_lan.url(the_lan.private), the_lan.url(the_lan.public, 8080),
                f"http://{REGISTRY}/v2/"):  # fmt: skip
        rc, log = _build(sandbox, base + f"ADD {url} /fetched\n")
        assert rc != 0 and "connection refused" in log, (url, log[-2000:])
