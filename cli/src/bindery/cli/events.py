"""`bindery events`: follow the event log live, show one launch's timeline, replay a slice of it.

In: the event log stream of the virtual host in `BINDERY_AMQP_URL` (or `--amqp-url`).
Out: one line per event on stdout; `replay` republishes events into another virtual host so a
developer can run a service locally against a real past launch. Errors are one line on stderr
and exit status 1, never a traceback.

    bindery events tail [--type T] [--launch ID]
    bindery events show <launch-id>
    bindery events replay --launch <id> | --since <time> [--until <time>] --into <vhost>
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bindery.bus import BROKER_ERRORS, Bus
from bindery.bus.eventlog import NoEventLog, Recorded, Start, read, replay
from bindery.events import Event, LaunchFailed
from bindery.settings import CommonSettings

_ENVELOPE = frozenset({"event_id", "launch_id", "time"})
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# A field value longer than this is cut in one-line output (build messages can be 20 kB).
MAX_VALUE = 120


class UsageError(Exception):
    """Bad input from the person at the terminal: said in one line, exit status 1."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or an age such as 30s, 15m, 2h, 7d."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r} is not a time: give ISO 8601 (2025-01-31T12:00) or an age (15m, 2h, 7d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def unreachable(vhost: str, exc: BaseException) -> str:
    # The broker refuses an unknown virtual host by closing the connection: no clearer reason.
    return (
        f"cannot open virtual host {vhost} ({type(exc).__name__}): is RabbitMQ up, and does "
        "the virtual host exist? (scripts/infra.sh vhost NAME creates one)"
    )


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path.removeprefix("/")) or "/"


def summary(event: Event) -> str:
    """The event's own fields as `key=value`, long values cut; the launch context's fields
    beside them, as though they were the event's."""
    dumped = event.model_dump(mode="json")
    flat = {**dumped.pop("context", {}), **dumped}
    fields = []
    for key, value in flat.items():
        if key in _ENVELOPE or value in ("", None, [], {}):
            continue
        text = str(value).replace("\n", " ").strip()
        if len(text) > MAX_VALUE:
            text = text[: MAX_VALUE - 3] + "..."
        fields.append(f"{key}={text}")
    return " ".join(fields)


def format_line(record: Recorded) -> str:
    event = record.event
    return (
        f"{event.time.isoformat(timespec='milliseconds')}  {event.type:<17} "
        f"{event.launch_id}  {record.producer or '?':<9}  {summary(event)}"
    )


def timeline(records: list[Recorded]) -> list[str]:
    """A launch's outcome, then each event with its producer and the delay since the one
    before it."""
    first = records[0].event
    failed = [r.event for r in records if isinstance(r.event, LaunchFailed)]
    types = {r.event.type for r in records}
    if failed:
        failure = failed[-1]
        assert isinstance(failure, LaunchFailed)
        outcome = f"failed in {failure.service} ({failure.reason.value}): {failure.message}"
    elif "pod-ready" in types:
        outcome = "ready"
    else:
        outcome = "in progress (no pod-ready or launch-failed yet)"
    total = (records[-1].event.time - first.time).total_seconds()
    lines = [
        f"launch {first.launch_id}: {outcome.rstrip()}",
        f"{len(records)} events, {total:.3f}s",
    ]
    previous = first.time
    for record in records:
        event = record.event
        delay = (event.time - previous).total_seconds()
        previous = event.time
        lines.append(
            f"  +{delay:8.3f}s  {event.time.strftime('%H:%M:%S.%f')[:-3]}  "
            f"{record.producer or '?':<9}  {event.type:<17} {summary(event)}"
        )
    return lines


async def _tail(args: argparse.Namespace) -> int:
    start: Start = parse_time(args.since) if args.since else "next"
    async for record in read(
        args.amqp_url, start=start, launch_id=args.launch, event_type=args.type, follow=True
    ):
        print(format_line(record), flush=True)
    return 0


async def _show(args: argparse.Namespace) -> int:
    start: Start = parse_time(args.since) if args.since else "first"
    records = [r async for r in read(args.amqp_url, start=start, launch_id=args.launch_id)]
    if not records:
        raise UsageError(
            f"no events of launch {args.launch_id} in the event log of {vhost_of(args.amqp_url)} "
            "(it keeps events for BINDERY_EVENT_LOG_MAX_AGE)"
        )
    print("\n".join(timeline(records)))
    return 0


async def _replay(args: argparse.Namespace) -> int:
    source = vhost_of(args.amqp_url)
    if args.into == source:
        raise UsageError(
            f"--into {args.into} is the virtual host being read: replaying there would "
            "run those launches again for real; give another one"
        )
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    start: Start = since or "first"
    settings = CommonSettings()
    into = Bus(
        with_vhost(args.amqp_url, args.into),
        "replay",
        event_log_max_age=settings.event_log_max_age,
        event_log_max_bytes=settings.event_log_max_bytes,
        connect_timeout=5,
    )
    try:
        await into.connect()
    except BROKER_ERRORS as exc:
        raise UsageError(unreachable(args.into, exc)) from None
    try:
        records = read(args.amqp_url, start=start, until=until, launch_id=args.launch)
        count = await replay(_echo(records), into)
    finally:
        await into.close()
    print(f"replayed {count} events from {source} into {args.into}")
    return 0 if count else 1


async def _echo(records: AsyncIterator[Recorded]) -> AsyncIterator[Recorded]:
    async for record in records:
        print(format_line(record), flush=True)
        yield record


Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(command(args))
        except KeyboardInterrupt:
            return 130
        except (UsageError, NoEventLog) as exc:
            print(f"bindery events: {exc}", file=sys.stderr)
        except BROKER_ERRORS as exc:
            print(f"bindery events: {unreachable(vhost_of(args.amqp_url), exc)}", file=sys.stderr)
        return 1

    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `events` and its subcommands to the `bindery` command line."""
    events = subparsers.add_parser("events", help="follow, show and replay the event log")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--amqp-url",
        default=CommonSettings().amqp_url,
        help="broker and virtual host whose event log to read (default: BINDERY_AMQP_URL)",
    )
    commands = events.add_subparsers(dest="events_command", required=True)

    tail = commands.add_parser("tail", parents=[common], help="print events as they happen")
    tail.add_argument("--type", help="only events of this type, e.g. launch-failed")
    tail.add_argument("--launch", help="only events of this launch id")
    tail.add_argument("--since", help="start this far back (15m, 2h) or at this ISO time")
    tail.set_defaults(func=_run(_tail))

    show = commands.add_parser("show", parents=[common], help="one launch's timeline and outcome")
    show.add_argument("launch_id")
    show.add_argument("--since", help="read from this time on (faster on a long event log)")
    show.set_defaults(func=_run(_show))

    replay_parser = commands.add_parser(
        "replay", parents=[common], help="republish recorded events into another virtual host"
    )
    which = replay_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--launch", help="every event of this launch id")
    which.add_argument("--since", help="every event from this time (15m, 2h, ISO 8601)")
    replay_parser.add_argument("--until", help="up to this time (default: now)")
    replay_parser.add_argument("--into", required=True, help="the virtual host to publish into")
    replay_parser.set_defaults(func=_run(_replay))
