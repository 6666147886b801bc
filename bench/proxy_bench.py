"""Proxy benchmark: HTTP and websocket-echo throughput and latency through the gateway's proxy,
through configurable-http-proxy (JupyterHub's proxy, from npm), through HAProxy (Debian's; C, no
interpreter: what a proxy that costs only its system calls reaches on this machine) and straight
at the upstream with no proxy at all ("direct"), in the same run, at concurrency 1, 10 and 50.
Goals (GOALS below): gateway throughput at least 0.6 x direct's for HTTP and 0.8 x for websocket
messages at 10 and 50 connections, at least CHP's everywhere, and p99 no worse than CHP's in
every cell. HAProxy is no goal, only the measure of how much of direct's throughput any proxy
sharing these cores with the load and the upstream can keep.

Each proxy runs alone in its own process in front of the same stand-in Jupyter; the load comes
from one more process (closed loop: each of N workers sends its next request when the last
answered, over raw asyncio protocols on uvloop so the load generator is not what limits either
proxy on a small machine; every answer is checked). Direct sends the same requests to the
upstream's port. Nothing is pinned to a core: the JSON says which process played which part, the
cores each used per cell, the CPU other processes on the machine took meanwhile, and the load
average at start and end. Results: bench/results/proxy.json.

    .venv/bin/python bench/proxy_bench.py [--seconds 2] [--rounds 3] [--concurrency 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httptools
import uvloop
from proxy_servers import BODY
from reporting import machine, percentile, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHP = REPO / "node_modules/.bin/configurable-http-proxy"
HAPROXY = "/usr/sbin/haproxy"
TARGETS = ("gateway", "chp", "haproxy", "direct")
# The goals of issue 16 (item 4), recorded in the JSON beside each cell's verdict. Direct is the
# ceiling: a proxy adds a hop, so the goal is a share of direct's throughput where connections
# are many enough to keep every process busy (10 and 50), while CHP is the bar in every cell.
GOALS: dict[str, Any] = {
    "throughput_vs_direct_at_least": {"http": 0.6, "websocket": 0.8},
    "throughput_vs_direct_at_concurrency": [10, 50],
    "throughput_vs_chp_at_least": 1.0,
    "p99_vs_chp_at_most": 1.0,
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with suppress(OSError):
            urllib.request.urlopen(url, timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {limit} s")


def start(
    stack: ExitStack, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)
    return proc


def haproxy_config(port: int, upstream: int) -> str:
    """HAProxy in front of the upstream, tuned for this load: kept-alive connections both ways
    (reused across clients), websockets tunnelled, one thread per core (its default)."""
    return f"""\
global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream
backend upstream
    http-reuse always
    server jupyter 127.0.0.1:{upstream}
"""


def summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


class _Closed(Exception):
    """The proxy closed a connection of the load generator."""


class _Worker(asyncio.Protocol):
    """One closed-loop worker on one kept-alive connection: send, wait for the whole answer,
    check it, note the latency, send again until the time is up."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        if time.perf_counter() < self.run.stop_at:
            self.run.errors += 1  # the proxy ended the connection
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self) -> None:
        assert self.transport is not None
        self.started = time.perf_counter()
        self.transport.write(self.run.request)

    def answered(self, ok: bool) -> None:
        """Note one answer; send the next request or stop."""
        run = self.run
        now = time.perf_counter()
        if now >= run.warm_until:
            if ok:
                run.latencies.append(now - self.started)
            else:
                run.errors += 1
        if now < run.stop_at:
            self.send()
        else:
            self.finish()

    def finish(self) -> None:
        assert self.transport is not None
        self.transport.close()


class _Run:
    def __init__(self, request: bytes, seconds: float) -> None:
        self.request = request
        self.latencies: list[float] = []
        self.errors = 0
        self.warm_until = time.perf_counter() + 1.0  # connections open, caches filled
        self.stop_at = self.warm_until + seconds


class _HttpWorker(_Worker):
    """Answers parsed by llhttp; each must be a 200 with the upstream's whole body."""

    def __init__(self, run: _Run, body_length: int) -> None:
        super().__init__(run)
        self.parser = httptools.HttpResponseParser(self)
        self.body_length = body_length
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.received = 0

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        ok = self.parser.get_status_code() == 200 and self.received == self.body_length
        self.answered(ok)


class _WebSocketWorker(_Worker):
    """After its handshake, sends one masked text frame and waits for the echo of it."""

    def __init__(self, run: _Run, handshake: bytes, payload: bytes) -> None:
        super().__init__(run)
        self.handshake = handshake
        self.payload = payload
        self.buffer = b""
        self.closing = False
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.write(self.handshake)  # type: ignore[union-attr]

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if not self.open.done():
            self.open.set_exception(_Closed())

    def finish(self) -> None:
        """Close as a browser does: a close frame, then wait for the proxy's before hanging up
        (hanging up with the echo unread would reset the connection)."""
        assert self.transport is not None
        self.transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000, zero mask
        self.closing = True

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.open.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.open.set_exception(_Closed())
                return
            self.open.set_result(None)
            buffer = buffer[end + 4 :]
        while len(buffer) >= 2:
            length = buffer[1] & 0x7F
            header = 2 if length < 126 else (4 if length == 126 else 10)
            if len(buffer) < header:
                break
            if length == 126:
                length = int.from_bytes(buffer[2:4], "big")
            elif length == 127:
                length = int.from_bytes(buffer[2:10], "big")
            if len(buffer) < header + length:
                break
            opcode = buffer[0] & 0x0F
            payload = buffer[header : header + length]
            buffer = buffer[header + length :]
            if self.closing:
                if opcode == 0x8 and self.transport is not None:
                    self.transport.close()
                continue
            self.answered(opcode == 0x1 and payload == self.payload)
        self.buffer = buffer


def _masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (RFC 6455: client frames are masked, here with a random key)."""
    key = secrets.token_bytes(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    return bytes((0x81,)) + length + key + masked


async def _ended(workers: Sequence[_Worker], run: _Run) -> None:
    """Wait for every worker's connection to end; one the proxy never closes is an error."""
    await asyncio.wait([w.lost for w in workers], timeout=run.stop_at + 10 - time.perf_counter())
    for worker in workers:
        if not worker.lost.done() and worker.transport is not None:
            run.errors += 1
            worker.transport.abort()


async def http_load(
    port: int, path: str, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    run = _Run((head + "\r\n").encode(), seconds)
    loop = asyncio.get_running_loop()
    workers = []
    for _ in range(concurrency):
        _, worker = await loop.create_connection(
            lambda: _HttpWorker(run, len(BODY)), "127.0.0.1", port
        )
        workers.append(worker)
    for worker in workers:
        worker.send()
    await _ended(workers, run)
    return summary(run.latencies, run.errors, seconds)


async def ws_load(
    port: int, path: str, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    payload = b"m" * 256  # a small kernel message
    run = _Run(_masked_text_frame(payload), seconds)
    loop = asyncio.get_running_loop()
    workers = []
    for _ in range(concurrency):
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        handshake = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        ).encode()
        _, worker = await loop.create_connection(
            functools.partial(_WebSocketWorker, run, handshake, payload), "127.0.0.1", port
        )
        await worker.open
        workers.append(worker)
    for worker in workers:
        worker.send()
    await _ended(workers, run)
    return summary(run.latencies, run.errors, seconds)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far (proc(5): utime, stime)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process, of the whole machine (busy, and stolen by the
    hypervisor) and the clock: two snapshots give the cores each used in between."""
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = cpu
    return {
        **{role: cpu_seconds(pid) for role, pid in pids.items()},
        "machine": (user + nice + system + irq + softirq) / CLOCK_TICKS,
        "stolen": steal / CLOCK_TICKS,
        "clock": time.monotonic(),
    }


def cores_used(
    before: dict[str, float], after: dict[str, float], roles: Sequence[str]
) -> dict[str, float]:
    """Cores each of the bench's processes kept busy between two snapshots; other_processes is
    the rest of the machine's busy time (other benches and tests on the shared machine, the OS),
    stolen_by_hypervisor the time the VM's cores wanted to run but the host ran something else."""
    wall = after["clock"] - before["clock"]
    used = {role: (after[role] - before[role]) / wall for role in roles}
    others = (after["machine"] - before["machine"]) / wall - sum(used.values())
    return {
        **{role: round(cores, 2) for role, cores in used.items()},
        "other_processes": round(max(0.0, others), 2),
        "stolen_by_hypervisor": round((after["stolen"] - before["stolen"]) / wall, 2),
    }


def median_cell(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's figures for a cell: medians over its rounds, totals of requests and errors."""
    return {
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        **{
            figure: statistics.median(r[figure] for r in rounds)
            for figure in ("throughput_per_s", "p50_ms", "p99_ms")
        },
        "rounds_throughput_per_s": [r["throughput_per_s"] for r in rounds],
        "rounds_p99_ms": [r["p99_ms"] for r in rounds],
        "cores_used": {
            part: round(statistics.median(r["cores_used"][part] for r in rounds), 2)
            for part in rounds[0]["cores_used"]
        },
    }


def cell_verdict(kind: str, level: int, cell: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The gateway against direct and CHP in one cell, and which of GOALS it meets there."""
    gateway, chp, haproxy, direct = (cell[name] for name in TARGETS)
    throughput_vs_direct = gateway["throughput_per_s"] / direct["throughput_per_s"]
    throughput_vs_chp = gateway["throughput_per_s"] / chp["throughput_per_s"]
    p99_vs_chp = gateway["p99_ms"] / chp["p99_ms"]
    met = {
        "throughput_vs_chp": throughput_vs_chp >= GOALS["throughput_vs_chp_at_least"],
        "p99_vs_chp": p99_vs_chp <= GOALS["p99_vs_chp_at_most"],
    }
    if level in GOALS["throughput_vs_direct_at_concurrency"]:
        wanted = GOALS["throughput_vs_direct_at_least"][kind]
        met["throughput_vs_direct"] = throughput_vs_direct >= wanted
    return {
        "throughput_vs_direct": round(throughput_vs_direct, 3),
        "throughput_vs_chp": round(throughput_vs_chp, 3),
        "chp_throughput_vs_direct": round(chp["throughput_per_s"] / direct["throughput_per_s"], 3),
        "haproxy_throughput_vs_direct": round(
            haproxy["throughput_per_s"] / direct["throughput_per_s"], 3
        ),
        "p99_vs_chp": round(p99_vs_chp, 3),
        "p99_vs_direct": round(gateway["p99_ms"] / direct["p99_ms"], 3),
        "goals_met": met,
        "meets_goals": all(met.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target and cell")
    parser.add_argument("--concurrency", default="1,10,50")
    options = parser.parse_args()
    levels = [int(c) for c in options.concurrency.split(",")]
    # The load generator shares two cores with the proxy and the upstream: on uvloop, with
    # raw protocols, it leaves them most of the machine (the same for every target).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if not CHP.exists():
        print("configurable-http-proxy is missing: run `npm ci` (scripts/install.sh does)")
        return 1
    if not Path(HAPROXY).exists():
        print("haproxy is missing: run scripts/install.sh")
        return 1

    sys.path.insert(0, str(REPO / "libs/src"))
    from bindery.tokens import session_token

    load_average_at_start = os.getloadavg()
    secret = secrets.token_hex(32)
    token = session_token(secret, "s1")
    upstream, gateway, chp, chp_api = free_port(), free_port(), free_port(), free_port()
    haproxy = free_port()
    servers = str(HERE / "proxy_servers.py")
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        haproxy_cfg = Path(stack.enter_context(TemporaryDirectory())) / "haproxy.cfg"
        haproxy_cfg.write_text(haproxy_config(haproxy, upstream))
        processes = {
            "upstream": start(stack, [sys.executable, servers, "upstream", str(upstream)]),
            "gateway": start(
                stack, [sys.executable, servers, "gateway", str(gateway), str(upstream), secret]
            ),
            "chp": start(
                stack,
                [
                    str(CHP),
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(chp),
                    "--api-ip",
                    "127.0.0.1",
                    "--api-port",
                    str(chp_api),
                    "--default-target",
                    f"http://127.0.0.1:{upstream}",
                    "--log-level",
                    "error",
                ],
                {**os.environ, "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)},
            ),
            # -db: stay in the foreground, so the process is the one whose CPU is counted.
            "haproxy": start(stack, [HAPROXY, "-db", "-f", str(haproxy_cfg)]),
        }
        wait_http(f"http://127.0.0.1:{upstream}/user/s1/ready")
        wait_http(f"http://127.0.0.1:{gateway}/user/s1/ready?token={token}")
        wait_http(f"http://127.0.0.1:{chp}/user/s1/ready")
        wait_http(f"http://127.0.0.1:{haproxy}/user/s1/ready")
        pids = {"load": os.getpid(), **{role: p.pid for role, p in processes.items()}}
        cores_allowed = {role: sorted(os.sched_getaffinity(pid)) for role, pid in pids.items()}
        headers = {"Authorization": f"token {token}"}  # the upstream ignores it (direct)
        ports = {"gateway": gateway, "chp": chp, "haproxy": haproxy, "direct": upstream}
        loads = {
            "http": (http_load, "/user/s1/api/contents"),
            "websocket": (ws_load, "/user/s1/ws"),
        }
        # The machine is shared: the targets take turns (who goes first rotates), several
        # short rounds each, and each figure is the median of a target's rounds, so a burst of
        # background load hits all alike and no single round decides a cell.
        for kind, (load, path) in loads.items():
            for level in levels:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
                for turn in range(options.rounds):
                    shift = turn % len(TARGETS)
                    for name in TARGETS[shift:] + TARGETS[:shift]:
                        before = cpu_snapshot(pids)
                        figures = asyncio.run(
                            load(ports[name], path, headers, level, options.seconds)
                        )
                        figures["cores_used"] = cores_used(before, cpu_snapshot(pids), list(pids))
                        rounds[name].append(figures)
                for name, cells in rounds.items():
                    cell = median_cell(cells)
                    results.setdefault(kind, {}).setdefault(str(level), {})[name] = cell
                    print(f"{kind:9} c={level:<3} {name:8} {cell}", flush=True)

    verdict = {
        f"{kind}@{level}": cell_verdict(kind, int(level), cell)
        for kind, by_level in results.items()
        for level, cell in by_level.items()
    }
    document = {
        "benchmark": "proxy",
        "anchor": "configurable-http-proxy (npm), HAProxy and no proxy at all (direct: the load "
        "straight at the upstream), same run, same upstream and load",
        "goal": {**GOALS, "met": all(v["meets_goals"] for v in verdict.values())},
        "setup": {
            "gateway": "one process on uvloop, served as `python -m bindery.gateway` serves: "
            "the fast lane (fastlane.py) answers the load's plain reads -- token check, shares, "
            "activity, the session's cookie set on each answer since the load keeps none; "
            "aiohttp's app with all its middlewares has the rest",
            "chp": "one node process: configurable-http-proxy, default target, no auth",
            "haproxy": "one haproxy process (Debian's package), one thread per core (its "
            "default), kept-alive connections both ways, websockets tunnelled, no auth",
            "direct": "no proxy: the load generator connects to the upstream's own port with "
            "the same requests, so the path has one hop and one process fewer",
            "upstream": "one process: aiohttp + uvloop, 1 KiB HTTP answer and websocket echo",
            "load": "one process on uvloop: N kept-alive connections / N websockets as raw "
            "asyncio protocols, closed loop (send, wait for the whole answer, send again); "
            "HTTP answers parsed by llhttp (httptools) and checked (200, the 1 KiB body), "
            "websocket echoes checked byte for byte. It replaced an aiohttp client that spent "
            "more CPU per request than either proxy on the shared 2 cores",
            "placement": "five processes (load: this script; upstream; gateway; chp; "
            "haproxy), none "
            "pinned: the kernel runs each on any core it allows (machine.cores_allowed). Only "
            "the target being measured has work; the others idle. Each cell's cores_used says "
            "how many cores each process kept busy (median over rounds, CPU time from /proc "
            "over the whole round, warm-up included), how much the machine's other processes "
            "took meanwhile and how much the hypervisor stole. The load generator is one "
            "thread: near 1.0 core it would be what bounds the figure",
        },
        "statistic": "per cell and target: the median over rounds of throughput, p50 and p99 "
        "(each round: 1 s warm-up, then seconds_per_round measured; the targets rotate "
        "who goes first); requests and errors: totals over the rounds",
        "seconds_per_round": options.seconds,
        "rounds": options.rounds,
        "machine": machine()
        | {
            "node": subprocess.run(
                ["node", "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "cores_allowed": cores_allowed,
            "load_average_at_start": load_average_at_start,
        },
        "results": results,
        "verdict": verdict,
    }
    write_report("proxy", document, shown=verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
