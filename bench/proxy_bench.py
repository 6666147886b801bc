"""Proxy benchmark: HTTP and websocket-echo throughput and latency through the gateway's proxy
against configurable-http-proxy (JupyterHub's proxy, from npm), in the same run, at concurrency
1, 10 and 50. Target: at least CHP's throughput at every concurrency, p99 no worse.

Each proxy runs alone in its own process in front of the same stand-in Jupyter; the load comes
from one more process (closed loop: each of N workers sends its next request when the last
answered). Results: bench/results/proxy.json.

    .venv/bin/python bench/proxy_bench.py [--seconds 3] [--rounds 3] [--concurrency 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import aiohttp

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


async def http_load(
    url: str, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        # Warm up: connections open, caches filled.
        warm_until = time.monotonic() + 1.0
        stop_at = warm_until + seconds

        async def worker() -> None:
            nonlocal errors
            while (now := time.monotonic()) < stop_at:
                started = time.perf_counter()
                try:
                    async with http.get(url) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if now >= warm_until:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, errors, seconds)


async def ws_load(
    url: str, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    message = "m" * 256  # a small kernel message
    async with aiohttp.ClientSession(headers=headers) as http:
        sockets = [await http.ws_connect(url, max_msg_size=0) for _ in range(concurrency)]
        warm_until = time.monotonic() + 1.0
        stop_at = warm_until + seconds

        async def worker(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal errors
            while (now := time.monotonic()) < stop_at:
                started = time.perf_counter()
                await ws.send_str(message)
                reply = await ws.receive()
                if now >= warm_until:
                    if reply.type == aiohttp.WSMsgType.TEXT and reply.data == message:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1

        await asyncio.gather(*(worker(ws) for ws in sockets))
        for ws in sockets:
            await ws.close()
    return summary(latencies, errors, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per proxy and cell")
    parser.add_argument("--concurrency", default="1,10,50")
    options = parser.parse_args()
    levels = [int(c) for c in options.concurrency.split(",")]
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
        # The machine is shared: the two proxies take turns, several short rounds each, and
        # each keeps its median round, so a burst of background load hits both alike.
        for kind in ("http", "websocket"):
            for level in levels:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in proxies}
                for _ in range(options.rounds):
                    for name, port in proxies.items():
                        if kind == "http":
                            url = f"http://127.0.0.1:{port}/user/s1/api/contents"
                            load = http_load(url, headers, level, options.seconds)
                        else:
                            url = f"ws://127.0.0.1:{port}/user/s1/ws"
                            load = ws_load(url, headers, level, options.seconds)
                        rounds[name].append(asyncio.run(load))
                for name, cells in rounds.items():
                    cells.sort(key=lambda c: c["throughput_per_s"])
                    cell = {
                        **cells[len(cells) // 2],
                        "rounds_throughput_per_s": [c["throughput_per_s"] for c in cells],
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
            "load": "one process: aiohttp client, closed loop, N workers / N websockets",
        },
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
