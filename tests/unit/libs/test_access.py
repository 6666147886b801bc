"""The permissions each service's broker user gets, computed from the topology and what the
service publishes and consumes; and the table checked against the services' code."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import sys
from pathlib import Path

import pytest

from bindery.bus import topology
from bindery.bus.access import (
    ANY,
    SERVICES,
    SESSION_SECRET_HOLDERS,
    Permissions,
    definitions,
    password_hash,
    permissions,
    service_url,
    setup,
    user_name,
)
from bindery.events import event_types

REPO = Path(__file__).resolve().parents[3]
DECLARED = topology.declarations()
ALLOWED = {service: permissions(access, DECLARED) for service, access in SERVICES.items()}


def allows(pattern: str, name: str) -> bool:
    """How RabbitMQ applies a permission expression: an unanchored search."""
    return re.search(pattern, name) is not None


def may_publish(allowed: Permissions, routing_key: str) -> bool:
    exchange = topology.exchange_for(routing_key)
    return allows(allowed.write, exchange) and allows(allowed.topics[exchange].write, routing_key)


def test_each_service_may_publish_exactly_its_own_events() -> None:
    for service, allowed in ALLOWED.items():
        own = {key for event in SERVICES[service].publishes for key in event.routing_keys()}
        every_key = {key for event in event_types().values() for key in event.routing_keys()}
        assert {key for key in every_key if may_publish(allowed, key)} == own, service


def test_the_resolver_may_publish_ref_resolved_to_each_next_step_only() -> None:
    resolver = ALLOWED["resolver"]
    for step in ("build", "launch", "done"):
        assert may_publish(resolver, f"ref-resolved.{step}")
    assert not may_publish(resolver, "ref-resolved")
    assert not may_publish(resolver, "ref-resolved.anything")
    assert not may_publish(ALLOWED["builder"], "ref-resolved.build")


def test_only_the_scheduler_may_publish_pod_ready() -> None:
    assert [s for s, allowed in ALLOWED.items() if may_publish(allowed, "pod-ready")] == [
        "scheduler"
    ]
    assert not may_publish(ALLOWED["gateway"], "pod-ready")


def test_every_event_has_a_publisher() -> None:
    published = {event.type for access in SERVICES.values() for event in access.publishes}
    assert published == set(event_types())


def test_every_topic_exchange_has_topic_permissions_for_every_service() -> None:
    """Without an entry for an exchange, RabbitMQ would allow any routing key there."""
    topic = {e.name for e in DECLARED.exchanges if e.type == "topic"}
    assert topic == {topology.EVENTS_EXCHANGE, topology.LOGS_EXCHANGE}
    for allowed in ALLOWED.values():
        assert set(allowed.topics) == topic


def test_services_read_only_their_own_queues() -> None:
    shared = [spec.name for spec in topology.SHARED_QUEUES]
    for service, allowed in ALLOWED.items():
        own = {spec.name for spec in SERVICES[service].consumes if spec.name in shared}
        assert {name for name in shared if allows(allowed.read, str(name))} == own, service
    assert not allows(ALLOWED["builder"].read, topology.SCHEDULER.name or "")


def test_no_service_may_configure_or_bind_the_shared_topology() -> None:
    names = [e.name for e in DECLARED.exchanges] + [q.name for q in DECLARED.queues]
    for service, allowed in ALLOWED.items():
        assert not [name for name in names if allows(allowed.configure, name)], service
        # Write on a queue would let it bind the queue to an exchange it may read.
        queues = [q.name for q in DECLARED.queues if q.name != topology.DEAD_LETTER_QUEUE]
        assert not [name for name in queues if allows(allowed.write, name)], service


def test_the_builder_declares_and_binds_its_replica_queue() -> None:
    builder = ALLOWED["builder"]
    replica = topology.builder_replica("host-1-8592")
    assert allows(builder.configure, replica.name or "")
    assert allows(builder.write, replica.name or "")  # bind it
    assert allows(builder.read, replica.name or "")  # consume it
    assert allows(builder.read, topology.BUILDS_EXCHANGE)  # bind to it
    assert allows(builder.write, topology.BUILDS_UNCLAIMED_EXCHANGE)  # its dead letters
    assert not allows(builder.configure, topology.BUILDER.name or "")
    assert not allows(builder.configure, "bindery.builder.replica.")


def test_the_gateway_declares_exclusive_queues_and_reads_both_logs() -> None:
    gateway = ALLOWED["gateway"]
    exclusive = f"{topology.EXCLUSIVE_QUEUE_PREFIX}gateway.0123abcd"
    assert allows(gateway.configure, exclusive)
    assert allows(gateway.read, topology.BUILD_LOG_STREAM)
    # What its exclusive queue missed while the broker was away (gateway/recovery.py).
    assert allows(gateway.read, topology.EVENT_LOG_STREAM)
    assert not allows(gateway.read, topology.SCHEDULER.name or "")
    assert allows(gateway.topics[topology.EVENTS_EXCHANGE].read, "#")  # binds "#"
    assert allows(gateway.write, topology.DEAD_LETTER_EXCHANGE)  # copies dead letters there
    assert not allows(ALLOWED["resolver"].configure, exclusive)


def test_the_scheduler_reads_recent_launches_back_but_no_build_log() -> None:
    scheduler = ALLOWED["scheduler"]
    assert allows(scheduler.read, topology.EVENT_LOG_STREAM)  # the warm pool's demand
    assert not allows(scheduler.read, topology.BUILD_LOG_STREAM)


def test_the_archiver_publishes_nothing_and_reads_the_event_log() -> None:
    archiver = ALLOWED["archiver"]
    assert archiver.write == "^$"
    assert allows(archiver.read, topology.EVENT_LOG_STREAM)
    assert not allows(archiver.read, topology.BUILD_LOG_STREAM)


def test_expressions_are_anchored() -> None:
    resolver = ALLOWED["resolver"]
    assert not allows(resolver.read, "bindery.resolver.extra")
    assert not allows(resolver.read, "x.bindery.resolver")
    assert not allows(resolver.topics[topology.EVENTS_EXCHANGE].write, "ref-resolved-2")


# --- the table against the services' code --------------------------------------------------
_CONSUMES = re.compile(r"bus\.consume\(\s*topology\.(\w+)")
_CONSTRUCTS = re.compile(r"\b([A-Z]\w+)\(")


def service_sources(service: str) -> list[str]:
    root = REPO / "services" / service / "src" / "bindery" / service
    return [path.read_text() for path in sorted(root.rglob("*.py"))]


def test_the_table_lists_what_each_service_consumes() -> None:
    for service, access in SERVICES.items():
        found = {name for text in service_sources(service) for name in _CONSUMES.findall(text)}
        # A queue per replica (topology.builder_replica) is listed with its name pattern.
        specs = [getattr(topology, name) for name in found]
        specs = [spec(ANY) if callable(spec) else spec for spec in specs]
        assert sorted(map(repr, specs)) == sorted(map(repr, access.consumes)), service


def test_the_table_lists_what_each_service_publishes() -> None:
    """Every event a service constructs (outside a `case` pattern) is one it publishes."""
    names = {cls.__name__: cls for cls in event_types().values()}
    for service, access in SERVICES.items():
        constructed = {
            names[name]
            for text in service_sources(service)
            for line in text.splitlines()
            if not line.lstrip().startswith("case ")
            for name in _CONSTRUCTS.findall(line)
            if name in names
        }
        assert constructed == set(access.publishes), service


def test_the_session_secret_goes_only_where_it_is_used() -> None:
    users = {s for s in SERVICES if any("require_secret(" in t for t in service_sources(s))}
    assert users == SESSION_SECRET_HOLDERS == {"gateway", "scheduler", "culler"}
    script = (REPO / "scripts/services.sh").read_text()
    listed = re.search(r"^SECRET_HOLDERS=\(([^)]*)\)", script, re.MULTILINE)
    assert listed is not None, "scripts/services.sh lists the services given the secret"
    assert set(listed.group(1).split()) == SESSION_SECRET_HOLDERS


# --- users, definitions, setup -------------------------------------------------------------
def test_user_names_carry_the_virtual_host() -> None:
    assert user_name("/", "gateway") == "bindery-gateway"
    assert user_name("bindery-test-3", "gateway") == "bindery-test-3-gateway"


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    raw = base64.b64decode(password_hash("s3cret", salt=b"\x01\x02\x03\x04"))
    assert raw[:4] == b"\x01\x02\x03\x04"
    assert raw[4:] == hashlib.sha256(b"\x01\x02\x03\x04s3cret").digest()


def test_service_urls() -> None:
    base = "amqp://guest:guest@127.0.0.1:5672/"
    assert service_url(base, "/", "bindery-gateway", "p/w") == (
        "amqp://bindery-gateway:p%2Fw@127.0.0.1:5672/"
    )
    assert service_url(base, "bindery-test-3", "u", "p") == (
        "amqp://u:p@127.0.0.1:5672/bindery-test-3"
    )
    assert service_url("amqps://broker", "a/b", "u", "p") == "amqps://u:p@broker:5671/a%2Fb"


def test_definitions_hold_users_permissions_and_the_topology() -> None:
    doc = definitions("v", {"gateway": "first-secret", "builder": "second-secret"}, DECLARED)
    assert [u["name"] for u in doc["users"]] == ["v-gateway", "v-builder"]
    assert all(u["hashing_algorithm"] == "rabbit_password_hashing_sha256" for u in doc["users"])
    assert "secret" not in json.dumps(doc), "only salted hashes of the passwords"
    assert {p["user"] for p in doc["permissions"]} == {"v-gateway", "v-builder"}
    assert {(t["user"], t["exchange"]) for t in doc["topic_permissions"]} == {
        (user, exchange)
        for user in ("v-gateway", "v-builder")
        for exchange in (topology.EVENTS_EXCHANGE, topology.LOGS_EXCHANGE)
    }
    queues = {q["name"] for q in doc["queues"]}
    assert {spec.name for spec in topology.SHARED_QUEUES} <= queues
    assert {topology.EVENT_LOG_STREAM, topology.BUILD_LOG_STREAM} <= queues
    assert all(item["vhost"] == "v" for key in doc for item in doc[key] if "vhost" in item)
    # A broker loading them at boot makes the virtual host from them.
    assert doc["vhosts"] == [{"name": "v"}]


def test_only_the_one_active_services_may_declare_their_lock() -> None:
    one_active = {"scheduler", "culler", "archiver"}
    for service in SERVICES:
        for other in SERVICES:
            allowed = allows(ALLOWED[service].configure, topology.lock_queue(other))
            assert allowed == (other == service and service in one_active), (service, other)


def fake_rabbitmqctl(record: Path, exit_code: int = 0) -> tuple[str, ...]:
    script = (
        f"import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n'); sys.exit({exit_code})"
    )
    return (sys.executable, "-c", script, str(record))


def test_setup_writes_private_urls_and_keeps_passwords(tmp_path: Path) -> None:
    record = tmp_path / "imported"
    directory = tmp_path / "amqp"
    first = setup("v", directory, DECLARED, rabbitmqctl=fake_rabbitmqctl(record))
    assert set(first) == set(SERVICES)
    for service, url in first.items():
        path = directory / f"{service}.url"
        assert path.read_text().strip() == url
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert url.startswith(f"amqp://v-{service}:")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    again = setup("v", directory, DECLARED, rabbitmqctl=fake_rabbitmqctl(record))
    assert again == first, "running services keep working after a refresh"
    imported = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(imported) == 2
    assert {u["name"] for u in imported[0]["users"]} == {f"v-{s}" for s in SERVICES}


def test_setup_fails_without_writing_when_rabbitmqctl_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="import_definitions failed"):
        setup("v", tmp_path / "amqp", DECLARED, rabbitmqctl=fake_rabbitmqctl(tmp_path / "r", 2))
    assert not (tmp_path / "amqp").exists()
