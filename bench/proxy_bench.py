"""Proxy benchmark: HTTP and websocket-echo throughput and latency through the gateway's proxy
against configurable-http-proxy (JupyterHub's proxy, from npm), in the same run, at concurrency
1, 10 and 50. Target: at least CHP's throughput at every concurrency, p99 no worse.

Each proxy runs alone in its own process in front of the same stand-in Jupyter; the load comes
from one more process (closed loop: each of N workers sends its next request when the last
answered, over raw asyncio protocols on uvloop so the load generator is not what limits either
proxy on a small machine; every answer is checked). Results: bench/results/proxy.json.

    .venv/bin/python bench/proxy_bench.py [--seconds 2] [--rounds 7] [--concurrency 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import platform
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
from typing import Any

import httptools
import uvloop
from proxy_servers import BODY

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHP = REPO / "node_modules/.bin/configurable-http-proxy"
RESULTS = HERE / "results" / "proxy.json"


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


def start(stack: ExitStack, argv: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    latencies.sort()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per proxy and cell")
    parser.add_argument("--concurrency", default="1,10,50")
    options = parser.parse_args()
    levels = [int(c) for c in options.concurrency.split(",")]
    # The load generator shares two cores with the proxy and the upstream: on uvloop, with
    # raw protocols, it leaves them most of the machine (the same for both proxies).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if not CHP.exists():
        print("configurable-http-proxy is missing: run `npm ci` (scripts/install.sh does)")
        return 1

    sys.path.insert(0, str(REPO / "libs/src"))
    from bindery.tokens import session_token

    secret = secrets.token_hex(32)
    token = session_token(secret, "s1")
    upstream, gateway, chp, chp_api = free_port(), free_port(), free_port(), free_port()
    servers = str(HERE / "proxy_servers.py")
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        start(stack, [sys.executable, servers, "upstream", str(upstream)])
        start(stack, [sys.executable, servers, "gateway", str(gateway), str(upstream), secret])
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)}
        start(
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
            env,
        )
        wait_http(f"http://127.0.0.1:{upstream}/user/s1/ready")
        wait_http(
            f"http://127.0.0.1:{gateway}/health".replace("/health", f"/user/s1/ready?token={token}")
        )
        wait_http(f"http://127.0.0.1:{chp}/user/s1/ready")
        headers = {"Authorization": f"token {token}"}
        proxies = {"gateway": gateway, "chp": chp}
        # The machine is shared: the two proxies take turns (who goes first alternates), several
        # short rounds each, and each figure is the median of a proxy's rounds, so a burst of
        # background load hits both alike and no single round decides a cell.
        for kind in ("http", "websocket"):
            for level in levels:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in proxies}
                for turn in range(options.rounds):
                    for name, port in sorted(proxies.items(), reverse=turn % 2 == 1):
                        if kind == "http":
                            path = "/user/s1/api/contents"
                            load = http_load(port, path, headers, level, options.seconds)
                        else:
                            path = "/user/s1/ws"
                            load = ws_load(port, path, headers, level, options.seconds)
                        rounds[name].append(asyncio.run(load))
                for name, cells in rounds.items():
                    cell = {
                        "requests": sum(c["requests"] for c in cells),
                        "errors": sum(c["errors"] for c in cells),
                        **{
                            figure: statistics.median(c[figure] for c in cells)
                            for figure in ("throughput_per_s", "p50_ms", "p99_ms")
                        },
                        "rounds_throughput_per_s": [c["throughput_per_s"] for c in cells],
                        "rounds_p99_ms": [c["p99_ms"] for c in cells],
                    }
                    results.setdefault(kind, {}).setdefault(str(level), {})[name] = cell
                    print(f"{kind:9} c={level:<3} {name:8} {cell}", flush=True)

    verdict = {}
    for kind, by_level in results.items():
        for level, cell in by_level.items():
            gw, anchor = cell["gateway"], cell["chp"]
            verdict[f"{kind}@{level}"] = {
                "throughput_ratio": round(gw["throughput_per_s"] / anchor["throughput_per_s"], 3),
                "p99_ratio": round(gw["p99_ms"] / anchor["p99_ms"], 3),
                "meets_target": gw["throughput_per_s"] >= anchor["throughput_per_s"]
                and gw["p99_ms"] <= anchor["p99_ms"],
            }
    document = {
        "benchmark": "proxy",
        "anchor": "configurable-http-proxy (npm), same run, same upstream and load",
        "target": "gateway throughput >= CHP's and p99 <= CHP's at every concurrency",
        "setup": {
            "gateway": "one process: bindery.gateway's app (all middlewares, token check, "
            "activity) on aiohttp + uvloop",
            "chp": "one node process: configurable-http-proxy, default target, no auth",
            "upstream": "one process: aiohttp + uvloop, 1 KiB HTTP answer and websocket echo",
            "load": "one process on uvloop: N kept-alive connections / N websockets as raw "
            "asyncio protocols, closed loop (send, wait for the whole answer, send again); "
            "HTTP answers parsed by llhttp (httptools) and checked (200, the 1 KiB body), "
            "websocket echoes checked byte for byte. It replaced an aiohttp client that spent "
            "more CPU per request than either proxy on the shared 2 cores",
        },
        "statistic": "per cell and proxy: the median over rounds of throughput, p50 and p99 "
        "(each round: 1 s warm-up, then seconds_per_round measured; the two proxies alternate "
        "who goes first); requests and errors: totals over the rounds",
        "seconds_per_round": options.seconds,
        "rounds": options.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "node": subprocess.run(
                ["node", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
        "verdict": verdict,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(verdict, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
