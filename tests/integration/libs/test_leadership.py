"""One active replica (bindery.bus.leadership) against the real broker: a standby takes over
when the active replica dies; a replica paused long enough for the broker to drop it finds
the lock taken and stops; with nobody else waiting it takes the lock back and holds on.

The active replica runs in a process of its own, so the test can kill or pause it (SIGSTOP)
as the machine would; its connection has a 1 s heartbeat, so the broker drops a paused one
within seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq.exceptions
import pytest

from bindery.bus import topology
from bindery.bus.leadership import Leadership
from tests.support.eventually import eventually

ACTIVE_REPLICA = """
import asyncio, sys
from bindery.bus.leadership import Leadership

async def main() -> None:
    leadership = Leadership(sys.argv[1], sys.argv[2], retry=0.2)
    await leadership.acquire()
    print("held", flush=True)
    await leadership.keep()
    print("lost", flush=True)

asyncio.run(main())
"""
#: Generous bounds: a loaded machine is slow, and only a hang should fail these tests.
LIMIT = 60.0


@pytest.fixture
def service() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def active(amqp_url: str, service: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A replica holding `service`'s lock, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ACTIVE_REPLICA,
        f"{amqp_url}?heartbeat=1",
        service,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await said(process, "held")
    yield process
    if process.returncode is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
    await process.wait()


async def said(process: asyncio.subprocess.Process, word: str) -> str:
    """Wait (bounded) for the replica to print a line that is `word`; what it printed before,
    if it exits first."""
    assert process.stdout is not None
    printed = []
    async with asyncio.timeout(LIMIT):
        while line := await process.stdout.readline():
            if line.decode().strip() == word:
                return ""
            printed.append(line.decode())
    raise AssertionError(f"the replica did not say {word!r}: {''.join(printed)}")


async def lock_holder(amqp_url: str, service: str) -> str:
    """Who holds the lock as the broker sees it: "someone" or "nobody"."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(topology.lock_queue(service), passive=True)
        except aiormq.exceptions.ChannelLockedResource:
            return "someone"
        except aiormq.exceptions.ChannelNotFoundEntity:
            return "nobody"
        return "someone"


async def until_holder(amqp_url: str, service: str, expected: str) -> None:
    async def holder_is_expected() -> bool:
        return await lock_holder(amqp_url, service) == expected

    await eventually(holder_is_expected, within=LIMIT, every=0.2, what=f"{expected} holds it")


async def test_a_standby_waits_and_takes_over_when_the_active_replica_dies(
    amqp_url: str, service: str, active: asyncio.subprocess.Process
) -> None:
    standby = Leadership(amqp_url, service, retry=0.2)
    acquiring = asyncio.create_task(standby.acquire())
    try:
        await asyncio.sleep(2)
        assert not acquiring.done(), "two replicas active at once"
        assert not standby.held
        active.kill()
        await asyncio.wait_for(acquiring, LIMIT)
        assert standby.held
    finally:
        acquiring.cancel()
        await standby.release()
    await until_holder(amqp_url, service, "nobody")


async def test_a_paused_replica_finds_its_lock_taken_and_stops(
    amqp_url: str, service: str, active: asyncio.subprocess.Process
) -> None:
    standby = Leadership(amqp_url, service, retry=0.2)
    os.kill(active.pid, signal.SIGSTOP)
    try:
        # The broker drops the paused replica's connection for its missed heartbeats.
        await asyncio.wait_for(standby.acquire(), LIMIT)
        os.kill(active.pid, signal.SIGCONT)
        await said(active, "lost")  # not going on as if it still held the lock
        assert standby.held
    finally:
        await standby.release()


async def test_with_nobody_waiting_a_replica_takes_its_lock_back_and_holds_on(
    amqp_url: str, service: str, active: asyncio.subprocess.Process
) -> None:
    os.kill(active.pid, signal.SIGSTOP)
    await until_holder(amqp_url, service, "nobody")
    os.kill(active.pid, signal.SIGCONT)
    await until_holder(amqp_url, service, "someone")
    # The one holding it is the old replica, still running: a newcomer stands by.
    assert active.returncode is None
    newcomer = Leadership(amqp_url, service, retry=0.2)
    acquiring = asyncio.create_task(newcomer.acquire())
    try:
        await asyncio.sleep(1)
        assert not acquiring.done()
    finally:
        acquiring.cancel()
        await newcomer.release()
