"""A RabbitMQ node of a test's own, which the test may stop and start (the shared broker on
5672 serves other test runs and `make up`: no test restarts it).

In: a directory, a slot number (its ports). Out: a node `bindery-test-<slot>@localhost` whose
state lives in the directory, listening on loopback only: AMQP on `amqp_port`, Erlang
distribution on `amqp_port + 1`; `fresh_vhost` sets a virtual host up as `make up` does (the
topology, one user per service: bindery.bus.access); `restart` stops the node and starts it
again on the same state, as an operator's restart would (durable queues, persistent messages
and streams survive it, connections do not).

Its configuration is config/rabbitmq.conf with the listener moved to `amqp_port`; its plugins
those scripts/infra.sh enables. It runs as root (the Debian wrapper's `su rabbitmq` would need
the directory to be rabbitmq's), with HOME in the directory so its CLI finds its cookie.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bindery.bus import access, topology

REPO = Path(__file__).resolve().parents[2]
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
#: What scripts/infra.sh enables on the shared broker.
PLUGINS = ("rabbitmq_consistent_hash_exchange",)
START_TIMEOUT = 90


class PrivateBroker:
    def __init__(self, directory: Path, slot: int) -> None:
        self.directory = directory
        self.node = f"bindery-test-{slot}@localhost"
        self.amqp_port = 26000 + slot * 10
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        config = self.directory / "rabbitmq.conf"
        lines = (REPO / "config/rabbitmq.conf").read_text().splitlines()
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "\n".join(
                f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}"
                if line.startswith("listeners.tcp.default")
                else line
                for line in lines
            )
            + "\n"
        )
        plugins = self.directory / "enabled_plugins"
        plugins.write_text(f"[{','.join(PLUGINS)}].\n")
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(self.directory),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.amqp_port + 1),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback,
            "RABBITMQ_CTL_ERL_ARGS": loopback,
        }

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "-q", *args],
            env=self.env,
            cwd=self.directory,  # where an Erlang VM that fails to boot leaves erl_crash.dump
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def start(self) -> None:
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            env=self.env,
            cwd=self.directory,
            check=True,
            capture_output=True,
        )
        # `wait` waits for the pid file, then for the node to be up (await_startup fails while
        # the node has not registered yet).
        self.ctl("wait", self.env["RABBITMQ_PID_FILE"], "--timeout", str(START_TIMEOUT))

    def stop(self) -> None:
        """Stop the node (its Erlang VM too) and wait until it is gone."""
        self.ctl("stop", "--idempotent")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, vhost: str, credentials: str = "guest:guest") -> str:
        return f"amqp://{credentials}@127.0.0.1:{self.amqp_port}/{vhost}"

    def fresh_vhost(self, vhost: str, urls_dir: Path) -> tuple[str, dict[str, str]]:
        """Virtual host `vhost`, emptied, with the topology and one user per service (their
        URLs written to `urls_dir`): guest's URL, and each service's."""
        if vhost in self.ctl("list_vhosts", "name").split():
            self.ctl("delete_vhost", vhost)
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        urls = access.setup(
            vhost,
            urls_dir,
            topology.declarations(),
            broker_url=self.url(vhost),
            # Its cookie is in its own HOME.
            rabbitmqctl=(
                "env",
                f"HOME={self.directory}",
                str(RABBITMQ_BIN / "rabbitmqctl"),
                "-n",
                self.node,
            ),
        )
        return self.url(vhost), urls

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
