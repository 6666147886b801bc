"""Bus benchmark: event hop latency (publish -> handler start) across processes at 500 events/s
over the real RabbitMQ. Writes bench/results/bus.json.

- bindery: one process publishes `session-activity` events with Bindery's bus (persistent,
  publisher confirms, trace context in headers) at a fixed rate; another consumes them from the
  culler's durable queue with Bindery's bus (parse, validate, manual ack after the handler). The
  hop is the event's own `time` (set as it is published) to the handler's first line.
  Both processes install a tracer provider as every service does (no exporter), so the spans
  the bus opens per event cost what they cost in a service.
- anchor: the same rate through bare aio-pika in the same run: a persistent, confirmed publish of
  a JSON body holding its send time, consumed with manual acks from a plain queue.
- anchor on Bindery's topology: the same bare aio-pika, publishing to Bindery's events exchange
  and consuming the culler's queue, so each message is also written to the event log stream as
  Bindery's are: what is left between it and `bindery` is the bus's own per-event work.

Publishes start on a fixed schedule (one every 2 ms), each in a task of its own, so a slow confirm
delays no other event: what is measured is the bus, not the publisher's pacing. Both ends run on
this machine, so their clocks are one. Loss: events published and confirmed but never handled
within 5 s of the last. Everything lives in a virtual host of the benchmark's own
(`bindery-bench-bus`), created for the run and deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from reporting import percentile, write_report

from bindery import logs, telemetry
from bindery.bus import Bus, Handlers, topology
from bindery.events import Event, PodReady, PodStopped, SessionActivity
from bindery.settings import CommonSettings

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "scripts/infra.sh"
VHOST = "bindery-bench-bus"
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
RATE = int(os.environ.get("BENCH_BUS_RATE", "500"))
DURATION = float(os.environ.get("BENCH_BUS_SECONDS", "20"))
BARE_QUEUE = "bench.bare"
KINDS = ("bindery", "bare", "bare-topology")
DRAIN = 5.0
"""After the last publish, how long the consumer waits for stragglers before it counts loss."""


# --- consumers (child processes): print each hop in ms, one a line, then exit ----------------


async def consume_bindery(expected: int) -> list[float]:
    hops: list[float] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        hops.append((time.time() - event.time.timestamp()) * 1000)
        if len(hops) >= expected:
            done.set()

    bus = Bus(URL, "culler", declare_topology=False)
    await bus.connect()
    sessions = Handlers().on(PodReady, handler).on(PodStopped, handler)
    await bus.consume(topology.CULLER, sessions.on(SessionActivity, handler))
    print("ready", flush=True)
    await _until(done, expected)
    await bus.close()
    return hops


async def consume_bare(expected: int, on_topology: bool) -> list[float]:
    hops: list[float] = []
    done = asyncio.Event()
    connection = await aio_pika.connect_robust(URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=8)
    queue = await (
        channel.declare_queue(topology.CULLER.name, passive=True)
        if on_topology
        else channel.declare_queue(BARE_QUEUE, durable=True)
    )

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        hops.append((time.time() - json.loads(message.body)["sent"]) * 1000)
        await message.ack()
        if len(hops) >= expected:
            done.set()

    await queue.consume(on_message)
    print("ready", flush=True)
    await _until(done, expected)
    await connection.close()
    return hops


async def _until(done: asyncio.Event, expected: int) -> None:
    """All `expected` handled, or the run's time plus the drain is over (loss)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), DURATION + 30 + DRAIN)


def consumer_main(kind: str, expected: int) -> None:
    logs.configure("culler", "json", "warning")
    telemetry.configure("culler", CommonSettings(trace_exporter="none"))
    consume = (
        consume_bindery(expected)
        if kind == "bindery"
        else consume_bare(expected, on_topology=kind == "bare-topology")
    )
    hops = asyncio.run(consume)
    print(json.dumps(hops), flush=True)


# --- the publisher (this process) --------------------------------------------------------------


async def paced(publish_one: object) -> tuple[int, float]:
    """Call `publish_one()` RATE times a second for DURATION; return how many were confirmed
    and the worst lag of a publish's start behind its schedule (ms)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(RATE * DURATION)
    tasks = []
    lag = 0.0
    for n in range(total):
        due = start + n / RATE
        await asyncio.sleep(max(0.0, due - loop.time()))
        lag = max(lag, (loop.time() - due) * 1000)
        tasks.append(asyncio.create_task(publish_one()))  # type: ignore[operator]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    return sum(1 for r in results if not isinstance(r, BaseException)), lag


async def publish_bindery() -> tuple[int, float]:
    bus = Bus(URL, "gateway", declare_topology=True)
    await bus.connect()
    last = datetime.now(UTC)

    async def one() -> None:
        await bus.publish(SessionActivity(launch_id="bench", session="s", last_activity=last))

    try:
        return await paced(one)
    finally:
        await bus.close()


async def publish_bare(on_topology: bool) -> tuple[int, float]:
    connection = await aio_pika.connect_robust(URL)
    channel = await connection.channel(publisher_confirms=True)
    if on_topology:
        exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
        routing_key = SessionActivity.type
    else:
        await channel.declare_queue(BARE_QUEUE, durable=True)
        exchange, routing_key = channel.default_exchange, BARE_QUEUE

    async def one() -> None:
        body = json.dumps({"sent": time.time()}).encode()
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key=routing_key)

    try:
        return await paced(one)
    finally:
        await connection.close()


async def declare_topology() -> None:
    """The shared topology, as the setup declares it, before the consumer looks its queue up."""
    bus = Bus(URL, "bench-setup", declare_topology=True)
    await bus.connect()
    await bus.close()


def run(kind: str) -> dict[str, object]:
    total = int(RATE * DURATION)
    child = subprocess.Popen(
        [sys.executable, __file__, "consume", kind, str(total)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise SystemExit(f"{kind} consumer did not start")
    confirmed, lag = asyncio.run(
        publish_bindery()
        if kind == "bindery"
        else publish_bare(on_topology=kind == "bare-topology")
    )
    hops = json.loads(child.stdout.readline())
    child.wait()
    return {
        "published": total,
        "confirmed": confirmed,
        "handled": len(hops),
        "lost": confirmed - len(hops),
        "hop_ms": {
            "p50": round(percentile(hops, 0.5), 2),
            "p90": round(percentile(hops, 0.9), 2),
            "p99": round(percentile(hops, 0.99), 2),
            "max": round(max(hops), 2) if hops else None,
        },
        "worst_publish_lag_ms": round(lag, 2),
    }


def main() -> int:
    logs.configure("gateway", "json", "warning")
    telemetry.configure("gateway", CommonSettings(trace_exporter="none"))
    subprocess.run([str(INFRA), "vhost-delete", VHOST], check=True, capture_output=True)
    subprocess.run([str(INFRA), "vhost", VHOST], check=True, capture_output=True)
    try:
        asyncio.run(declare_topology())
        results = {kind: run(kind) for kind in KINDS}
    finally:
        subprocess.run([str(INFRA), "vhost-delete", VHOST], check=True, capture_output=True)
    report = {
        "benchmark": "bus",
        "anchor": "bare aio-pika: persistent confirmed publish, manual-ack consume, same rate; "
        "on a plain queue, and on Bindery's topology (events exchange, event log stream)",
        "setup": __doc__,
        "rate_per_s": RATE,
        "duration_s": DURATION,
        "results": {
            "bindery": results["bindery"],
            "bare_aio_pika": results["bare"],
            "bare_aio_pika_on_bindery_topology": results["bare-topology"],
        },
        "goal": {"p50_ms": 5, "p99_ms": 20, "lost": 0},
    }
    write_report("bus", report, shown=report["results"])
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["consume"]:
        consumer_main(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
