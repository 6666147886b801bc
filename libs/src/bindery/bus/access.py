"""Least privilege on the broker: each service is a RabbitMQ user of its own, allowed only the
exchanges and queues it uses, and may publish only its own events.

In: per service, the events it publishes, the queues it consumes and the streams it reads
(`SERVICES`); the topology (topology.py). Out: RabbitMQ permissions per service (`permissions`):
configure/write/read regular expressions for the virtual host, and topic permissions on every
topic exchange, whose write expression lists the routing keys (event types) the service may
publish; and the definitions that `rabbitmqctl import_definitions` applies in one call: the
users, their permissions and the shared topology, which the services may not declare themselves.

RabbitMQ checks, per AMQP operation: declaring a queue or exchange needs *configure* on it
(looking one up, a passive declare, needs nothing); publishing needs *write* on the exchange and,
on a topic exchange, the routing key matching the topic write expression; consuming needs *read*
on the queue; binding needs *write* on the queue, *read* on the exchange and, on a topic exchange,
the binding key matching the topic read expression; declaring a queue whose dead letters go to an
exchange needs *write* on that exchange. Broker-side routing (dead-lettering, exchange-to-exchange
bindings, the event log's binding) is not checked. A permission expression matches a name
whether it is a queue's or an exchange's.

`python -m bindery.bus.access setup VHOST DIR` sets up a virtual host of the broker on this
machine (through `rabbitmqctl`, one `import_definitions`): it declares the topology, and creates or
refreshes one user per service, named `<prefix><service>` (prefix `bindery-` in `/`, else
`<vhost>-`, so the test virtual hosts and the one `make up` runs never share users), with a
random password kept from one run to the next, and writes `DIR/<service>.url` (mode 0600), the
AMQP URL the service connects with. `scripts/infra.sh access` runs it for `make up`.
`python -m bindery.bus.access show` prints what each service may do; `definitions VHOST DIR`
prints the definitions instead of importing them, for a broker that loads them at boot (a
container's rabbitmq.conf `load_definitions`), and writes the URLs the same way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from bindery.bus import topology
from bindery.bus.topology import QueueSpec, Topology
from bindery.events import (
    BuildLog,
    BuildStarted,
    Event,
    IdleDetected,
    ImageBuilt,
    ImagePulling,
    LaunchAbandoned,
    LaunchFailed,
    LaunchQueued,
    LaunchRequested,
    PodReady,
    PodScheduled,
    PodStopped,
    RefResolved,
    SessionActivity,
)

#: Stands for any replica in a queue name whose service declares one queue per replica.
ANY = "*"
#: The expression that matches nothing: no exchange or queue is named "" (the default
#: exchange is checked as `amq.default`).
NOTHING = "^$"


@dataclass(frozen=True)
class Access:
    """What one service does on the broker, and whether it holds the session secret."""

    publishes: tuple[type[Event], ...] = ()
    consumes: tuple[QueueSpec, ...] = ()
    streams: tuple[str, ...] = ()
    """Streams it reads from an offset (the event log, the build log)."""
    session_secret: bool = False
    """It makes, checks or presents session tokens (BINDERY_SESSION_SECRET): nobody else gets
    it."""
    lock: str | None = None
    """The lock queue it declares to be the one active replica (bindery.bus.leadership)."""


SERVICES: dict[str, Access] = {
    "resolver": Access(publishes=(RefResolved, LaunchFailed), consumes=(topology.RESOLVER,)),
    "builder": Access(
        publishes=(BuildStarted, BuildLog, ImageBuilt, LaunchFailed),
        consumes=(topology.BUILDER, topology.builder_replica(ANY)),
    ),
    # The scheduler reads back recent launches after a restart: the warm pool follows them.
    "scheduler": Access(
        publishes=(LaunchQueued, ImagePulling, PodScheduled, PodReady, PodStopped, LaunchFailed),
        consumes=(topology.SCHEDULER, topology.SCHEDULER_STOPS),
        streams=(topology.EVENT_LOG_STREAM,),
        session_secret=True,
        lock=topology.lock_queue("scheduler"),
    ),
    # The culler reads back recent session activity after a restart, and asks each session's
    # Jupyter (with its token) how busy its kernels are.
    "culler": Access(
        publishes=(IdleDetected,),
        consumes=(topology.CULLER,),
        streams=(topology.EVENT_LOG_STREAM,),
        session_secret=True,
        lock=topology.lock_queue("culler"),
    ),
    "archiver": Access(
        consumes=(topology.ARCHIVER,),
        streams=(topology.EVENT_LOG_STREAM,),
        lock=topology.lock_queue("archiver"),
    ),
    "gateway": Access(
        publishes=(LaunchRequested, LaunchAbandoned, SessionActivity),
        consumes=(topology.GATEWAY_EVENTS, topology.GATEWAY_LOGS),
        # The event log: what its queue missed while the broker was away (recovery.py).
        streams=(topology.BUILD_LOG_STREAM, topology.EVENT_LOG_STREAM),
        session_secret=True,
    ),
}

SESSION_SECRET_HOLDERS = frozenset(
    name for name, access in SERVICES.items() if access.session_secret
)


@dataclass(frozen=True)
class TopicPermission:
    write: str
    """Routing keys the service may publish with."""
    read: str
    """Binding keys the service may bind its own queues with."""


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str
    topics: Mapping[str, TopicPermission]
    """Per topic exchange (every one has an entry: without one, RabbitMQ allows any key)."""


def declares_itself(spec: QueueSpec) -> bool:
    """Whether a service declares and binds this queue itself: exclusive queues and the
    per-replica ones; the shared queues come declared and bound with the topology."""
    return spec.exclusive or spec not in topology.SHARED_QUEUES


def queue_pattern(spec: QueueSpec) -> str:
    if spec.name is None:
        return _literal(topology.EXCLUSIVE_QUEUE_PREFIX) + ".+"
    return _literal(spec.name).replace(_literal(ANY), ".+")


def permissions(access: Access, declared: Topology) -> Permissions:
    own = [spec for spec in access.consumes if declares_itself(spec)]
    configure = {queue_pattern(spec) for spec in own}
    if access.lock is not None:
        configure.add(_literal(access.lock))  # declaring it is all a lock needs
    write = {_literal(topology.exchange_for(event.type)) for event in access.publishes}
    write |= {queue_pattern(spec) for spec in own}  # to bind them
    for spec in own:
        # An exclusive queue's consumer copies a dead letter there itself; declaring a queue
        # that dead-letters to an exchange needs write permission on that exchange. (The
        # dead-letter queue has the exchange's name, so the gateway may also bind that queue
        # to the exchanges it reads: the worst it can do is copy events into it.)
        dead_letters = (
            topology.DEAD_LETTER_EXCHANGE
            if spec.exclusive
            else topology.queue_arguments(spec)["x-dead-letter-exchange"]
        )
        write.add(_literal(dead_letters))
    read = {queue_pattern(spec) for spec in access.consumes}
    read |= {_literal(spec.exchange) for spec in own}  # to bind to them
    read |= {_literal(stream) for stream in access.streams}
    topics = {
        exchange.name: TopicPermission(
            write=_any_of(
                _literal(key)
                for event in access.publishes
                if topology.exchange_for(event.type) == exchange.name
                for key in event.routing_keys()
            ),
            read=_any_of(
                _literal(key)
                for spec in own
                if spec.exchange == exchange.name
                for key in spec.routing_keys
            ),
        )
        for exchange in declared.exchanges
        if exchange.type == "topic"
    }
    return Permissions(_any_of(configure), _any_of(write), _any_of(read), topics)


def _literal(name: str) -> str:
    """`name` as a regular expression matching only itself (`-` and `#` need no escaping)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", name)


def _any_of(patterns: Iterable[str]) -> str:
    """One anchored expression matching any of `patterns` (RabbitMQ does not anchor them)."""
    unique = sorted(set(patterns))
    return f"^({'|'.join(unique)})$" if unique else NOTHING


def user_name(vhost: str, service: str) -> str:
    return f"{'bindery' if vhost == '/' else vhost}-{service}"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(
    vhost: str, passwords: Mapping[str, str], declared: Topology
) -> dict[str, list[dict[str, Any]]]:
    """What `rabbitmqctl import_definitions` applies: a user per service in `passwords` with its
    permissions in `vhost`, and the shared topology there."""
    users: list[dict[str, Any]] = []
    grants: list[dict[str, Any]] = []
    topic_grants: list[dict[str, Any]] = []
    for service, password in passwords.items():
        name = user_name(vhost, service)
        allowed = permissions(SERVICES[service], declared)
        users.append(
            {
                "name": name,
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        grants.append(
            {
                "user": name,
                "vhost": vhost,
                "configure": allowed.configure,
                "write": allowed.write,
                "read": allowed.read,
            }
        )
        topic_grants.extend(
            {"user": name, "vhost": vhost, "exchange": exchange, "write": p.write, "read": p.read}
            for exchange, p in allowed.topics.items()
        )
    return {
        # A broker that loads these at boot creates no default virtual host: name it.
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": grants,
        "topic_permissions": topic_grants,
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": dict(exchange.arguments),
            }
            for exchange in declared.exchanges
        ],
        "queues": [
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(queue.arguments),
            }
            for queue in declared.queues
        ],
        "bindings": [
            {
                "source": binding.source,
                "vhost": vhost,
                "destination": binding.destination,
                "destination_type": binding.destination_type,
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for binding in declared.bindings
        ],
    }


def service_url(broker_url: str, vhost: str, user: str, password: str) -> str:
    """The AMQP URL of `user` in `vhost` on the broker `broker_url` points at."""
    parts = urlsplit(broker_url)
    scheme = parts.scheme or "amqp"
    port = parts.port or (5671 if scheme == "amqps" else 5672)
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    path = "/" if vhost == "/" else "/" + quote(vhost, safe="")
    return f"{scheme}://{credentials}@{parts.hostname or '127.0.0.1'}:{port}{path}"


def _kept_password(path: Path, user: str) -> str | None:
    """The password an earlier setup wrote for `user`, so running services keep working."""
    try:
        parts = urlsplit(path.read_text().strip())
    except OSError:
        return None
    if parts.username is None or unquote(parts.username) != user or not parts.password:
        return None
    return unquote(parts.password)


def passwords_for(vhost: str, directory: Path, services: Sequence[str]) -> dict[str, str]:
    """Each service's password: the one an earlier setup wrote to `directory`, else a new one."""
    return {
        service: _kept_password(directory / f"{service}.url", user_name(vhost, service))
        or secrets.token_urlsafe(24)
        for service in services
    }


def write_urls(
    directory: Path, vhost: str, passwords: Mapping[str, str], broker_url: str
) -> dict[str, str]:
    """Write `directory/<service>.url` (mode 0600, in a 0700 directory); return the URLs."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    urls = {}
    for service, password in passwords.items():
        urls[service] = service_url(broker_url, vhost, user_name(vhost, service), password)
        fd = os.open(directory / f"{service}.url", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(urls[service] + "\n")
    return urls


def setup(
    vhost: str,
    directory: Path,
    declared: Topology,
    *,
    broker_url: str = "amqp://127.0.0.1:5672/",
    services: Sequence[str] = tuple(SERVICES),
    rabbitmqctl: Sequence[str] = ("rabbitmqctl",),
) -> dict[str, str]:
    """Create or refresh the services' users and the topology in `vhost` (which must exist) on
    the broker `rabbitmqctl` manages; write and return each service's AMQP URL (host and port
    those of `broker_url`)."""
    passwords = passwords_for(vhost, directory, services)
    result = subprocess.run(
        [*rabbitmqctl, "-q", "import_definitions"],
        input=json.dumps(definitions(vhost, passwords, declared)),
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl import_definitions failed: {result.stderr.strip()}")
    return write_urls(directory, vhost, passwords, broker_url)


def table() -> str:
    """What each service may do, one block per service."""
    declared = topology.declarations()
    lines = []
    for service, access in SERVICES.items():
        allowed = permissions(access, declared)
        lines.append(f"{service}:")
        lines.append(f"  configure {allowed.configure}")
        lines.append(f"  write     {allowed.write}")
        lines.append(f"  read      {allowed.read}")
        for exchange, topic in allowed.topics.items():
            lines.append(f"  topic {exchange}: write {topic.write}  read {topic.read}")
        lines.append(f"  session secret: {'yes' if access.session_secret else 'no'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bindery.settings import CommonSettings

    parser = argparse.ArgumentParser(prog="python -m bindery.bus.access", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    set_up = commands.add_parser("setup", help="create the services' users and the topology")
    set_up.add_argument("vhost", help="the virtual host (it must exist), e.g. /")
    set_up.add_argument("directory", type=Path, help="where to write <service>.url (0600)")
    set_up.add_argument("--service", action="append", choices=sorted(SERVICES))
    set_up.add_argument("--rabbitmqctl", default="rabbitmqctl")
    export = commands.add_parser(
        "definitions",
        help="print the definitions instead (for a broker that loads them at boot, "
        "rabbitmq.conf `load_definitions`); write the URLs",
    )
    export.add_argument("vhost")
    export.add_argument("directory", type=Path)
    export.add_argument("--service", action="append", choices=sorted(SERVICES))
    commands.add_parser("show", help="print what each service may do")
    args = parser.parse_args(argv)
    if args.command == "show":
        print(table())
        return 0
    # The event log's retention is the setting of whoever declares it: this setup. The
    # services' URLs point where BINDERY_AMQP_URL does.
    settings = CommonSettings()
    declared = topology.declarations(settings.event_log_max_age, settings.event_log_max_bytes)
    if args.command == "definitions":
        passwords = passwords_for(args.vhost, args.directory, args.service or tuple(SERVICES))
        print(json.dumps(definitions(args.vhost, passwords, declared), indent=2))
        write_urls(args.directory, args.vhost, passwords, settings.amqp_url)
        return 0
    try:
        urls = setup(
            args.vhost,
            args.directory,
            declared,
            broker_url=settings.amqp_url,
            services=args.service or tuple(SERVICES),
            rabbitmqctl=(args.rabbitmqctl,),
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    users = ", ".join(user_name(args.vhost, service) for service in urls)
    print(f"virtual host {args.vhost}: {users} (URLs in {args.directory})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
