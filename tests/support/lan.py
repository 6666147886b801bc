"""A LAN and a stand-in for the internet, made of a network namespace on this machine.

In: nothing (``lan()`` picks free names and addresses). Out: a `Lan` whose namespace, reached
from the host through a veth pair, holds
  * a private host (10.123.N.2, fd12:3456:N::2): what a session must not reach on a LAN;
  * a "public" host on documentation addresses (198.51.100.N, 2001:db8:1:N::2) that only
    routes on this machine point at: what a session may reach, standing in for the internet;
and an HTTP server on ports 80 and 8080 of all of them answering a token of this run's own, and
a UDP one on port 53 that sends the token back for any datagram (not DNS: a stand-in for a
resolver that is not this host's).
Tests look for the token in the reply, never at whether a connection opened: this machine's
outbound TCP to anything off it is answered by an intercepting proxy. No packet of these tests
leaves the machine: `lan()` checks that the public addresses route into the namespace before
it yields, and everything is removed afterwards (a crashed run's leftovers are swept by the
next one: the namespace's name holds its creator's pid).

``token_server(host)`` serves a token on a host address of this machine (loopback, or all of
them) for the same kind of probe.

``python -m tests.support.lan TOKEN HOST,... TCP_PORT,... [UDP_HOST,... UDP_PORT,...]`` is the
server itself (UDP on each address of its own, so that answers come from the address asked);
it prints ``ready`` and the TCP ports it bound, and stops on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

PREFIX = "bindery-lan-"
PORTS = (80, 8080)
UDP_PORTS = (53,)
READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Lan:
    namespace: str
    host_interface: str
    token: str
    private: str
    private6: str
    public: str
    public6: str
    host_address: str
    """The host's end of the veth pair: the namespace's default gateway."""

    def url(self, address: str, port: int = 80) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{port}/"


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", namespace] if namespace else []), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def _sweep() -> None:
    """Remove the namespaces of earlier runs whose process is gone."""
    for name in _ip("netns", "list", check=False).split():
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for orphan in _ip("netns", "pids", name, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(orphan), signal.SIGKILL)  # its server keeps the namespace alive
            _ip("netns", "delete", name, check=False)


def _taken(subnet: int) -> bool:
    routes = _ip("-4", "route", "show", "table", "all", check=False)
    routes += _ip("-6", "route", "show", "table", "all", check=False)
    return f"10.123.{subnet}." in routes or f"198.51.100.{subnet} " in routes


def _routes_into(address: str, interface: str) -> bool:
    out = _ip("-6" if ":" in address else "-4", "route", "get", address, check=False)
    return f" dev {interface} " in f" {out} "


@contextlib.contextmanager
def _server(
    token: str,
    hosts: tuple[str, ...],
    ports: tuple[int, ...],
    udp: tuple[tuple[str, ...], tuple[int, ...]] = ((), ()),
    namespace: str = "",
) -> Iterator[tuple[int, ...]]:
    """The token server as a process (in ``namespace`` if given); yields the ports it bound."""
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    cmd = [*prefix, sys.executable, "-m", "tests.support.lan", token, ",".join(hosts)]
    cmd += [",".join(map(str, ports)), ",".join(udp[0]), ",".join(map(str, udp[1]))]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if readable else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"token server did not start: {line!r}, exit {proc.poll()}")
        yield tuple(int(p) for p in line.split()[1:])
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def lan() -> Iterator[Lan]:
    _sweep()
    suffix = f"{os.getpid()}-{secrets.token_hex(3)}"
    namespace = PREFIX + suffix
    host_if = f"blan{secrets.token_hex(3)}"
    peer_if = f"{host_if}p"
    token = secrets.token_hex(16)
    candidates = [n for n in range(2, 250) if not _taken(n)]
    if not candidates:
        raise RuntimeError("no free 10.123.N.0/24 for a test LAN")
    n = secrets.choice(candidates)
    the_lan = Lan(
        namespace=namespace,
        host_interface=host_if,
        token=token,
        private=f"10.123.{n}.2",
        private6=f"fd12:3456:{n:x}::2",
        public=f"198.51.100.{n}",
        public6=f"2001:db8:1:{n:x}::2",
        host_address=f"10.123.{n}.1",
    )
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", namespace)
        _ip("addr", "add", f"10.123.{n}.1/24", "dev", host_if)
        _ip("-6", "addr", "add", f"fd12:3456:{n:x}::1/64", "dev", host_if, "nodad")
        _ip("link", "set", host_if, "up")
        _ip("link", "set", "lo", "up", namespace=namespace)
        _ip("addr", "add", f"{the_lan.private}/24", "dev", peer_if, namespace=namespace)
        _ip("-6", "addr", "add", f"{the_lan.private6}/64", "dev", peer_if, "nodad",
            namespace=namespace)  # fmt: skip
        _ip("addr", "add", f"{the_lan.public}/32", "dev", "lo", namespace=namespace)
        _ip("-6", "addr", "add", f"{the_lan.public6}/128", "dev", "lo", namespace=namespace)
        _ip("link", "set", peer_if, "up", namespace=namespace)
        _ip("route", "add", "default", "via", the_lan.host_address, namespace=namespace)
        _ip("-6", "route", "add", "default", "via", f"fd12:3456:{n:x}::1", namespace=namespace)
        _ip("route", "add", f"{the_lan.public}/32", "via", the_lan.private, "dev", host_if)
        _ip("-6", "route", "add", f"{the_lan.public6}/128", "via", the_lan.private6,
            "dev", host_if)  # fmt: skip
        for address in (the_lan.private, the_lan.private6, the_lan.public, the_lan.public6):
            # Never let a probe for a test host leave the machine.
            if not _routes_into(address, host_if):
                raise RuntimeError(f"{address} does not route into {namespace}")
        addresses = (the_lan.private, the_lan.private6, the_lan.public, the_lan.public6)
        with _server(token, ("::",), PORTS, (addresses, UDP_PORTS), namespace):
            yield the_lan
    finally:
        _ip("link", "delete", host_if, check=False)  # takes its routes and the peer along
        _ip("netns", "delete", namespace, check=False)


@contextlib.contextmanager
def token_server(host: str) -> Iterator[tuple[str, int]]:
    """A token server on ``host`` of this machine (``::`` or ``0.0.0.0`` for every address,
    ``127.0.0.1``, ``::1``), on a free port: yields (token, port)."""
    token = secrets.token_hex(16)
    with _server(token, (host,), (0,)) as ports:
        yield token, ports[0]


def serve(
    token: str, hosts: list[str], ports: list[int], udp_hosts: list[str], udp_ports: list[int]
) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{token} port {self.server.server_address[1]}\n".encode()  # type: ignore[index]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    servers = []
    for host in hosts:
        for port in ports:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET

            class Server(ThreadingHTTPServer):
                address_family = family
                daemon_threads = True

                def server_bind(self) -> None:
                    if self.address_family == socket.AF_INET6:
                        # "::" takes IPv4 too (mapped), as a dual-stack server would.
                        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    super().server_bind()

            servers.append(Server((host, port), Handler))
    threads = [Thread(target=s.serve_forever, daemon=True) for s in servers]
    for host in udp_hosts:
        for port in udp_ports:
            udp = socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
            )
            udp.bind((host, port))
            threads.append(Thread(target=_echo_token, args=(udp, token), daemon=True))
    for thread in threads:
        thread.start()
    print("ready", *(s.server_address[1] for s in servers), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def _echo_token(udp: socket.socket, token: str) -> None:
    while True:
        _, peer = udp.recvfrom(2048)
        udp.sendto(f"{token}\n".encode(), peer)


def _numbers(arg: str) -> list[int]:
    return [int(p) for p in arg.split(",") if p]


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    udp_hosts = [h for h in sys.argv[4].split(",") if h] if len(sys.argv) > 5 else []
    udp_ports = _numbers(sys.argv[5]) if len(sys.argv) > 5 else []
    serve(sys.argv[1], sys.argv[2].split(","), _numbers(sys.argv[3]), udp_hosts, udp_ports)
