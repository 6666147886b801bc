"""A podman node of a test's own, which the test may kill (the shared nodes serve other test runs
and `make up`: no test harms them).

In: a name and a directory. Out: a `podman system service` over storage of its own in that
directory (root, run root and tmp dir, as scripts/infra.sh starts node-2 and up), answering on
`url`; `kill` ends the service alone (its containers live on under conmon, as when only the
service crashes), `power_off` ends everything of the node at once (the service, each
container's conmon and the container's processes: a machine that lost its power), `hang`
stops the service's processes (SIGSTOP: its socket still takes connections, nothing answers
them) and `resume` lets them go on, `start` starts the service again over the same storage,
`remove` takes away its containers, images, processes and mounts. Every process it ends is
one it started or one of its own containers'.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NODE_ANSWERS_WITHIN = 60.0
"""Upper bound for a fresh podman service to answer on a loaded machine."""


@dataclass
class PrivateNode:
    """A podman API service over storage of its own under `base`."""

    name: str
    base: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.base / "node.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def storage(self) -> list[str]:
        return [
            "--root",
            str(self.base / "root"),
            "--runroot",
            str(self.base / "runroot"),
            "--tmpdir",
            str(self.base / "tmp"),
        ]

    def podman(self, *args: str, check: bool = True) -> str:
        """podman on this node's storage directly (no service needed)."""
        return subprocess.run(
            ["podman", *self.storage, *args], capture_output=True, text=True, check=check
        ).stdout

    def start(self) -> None:
        for part in ("root", "runroot", "tmp"):
            (self.base / part).mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        with (self.base / "service.log").open("ab") as log:
            # From its own dir: conmon writes an OOM-killed container's `oom` file there.
            self.process = subprocess.Popen(
                ["podman", *self.storage, "system", "service", "--time=0", self.url],
                cwd=self.base,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + NODE_ANSWERS_WITHIN
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{self.name} did not answer: see {self.base}/service.log")
            time.sleep(0.1)

    def _answers(self) -> bool:
        return (
            subprocess.run(
                ["podman", "--url", self.url, "info"], capture_output=True, check=False
            ).returncode
            == 0
        )

    def kill(self) -> None:
        """The node's service dies at once (its containers live on, under conmon)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def hang(self) -> None:
        """The node's service stops answering, its socket still open (SIGSTOP to its group).
        Returns once every thread of the service has stopped: until then a Go thread still
        running may answer a request or two."""
        assert self.process is not None and self.process.poll() is None, "not running"
        os.killpg(self.process.pid, signal.SIGSTOP)
        tasks = Path(f"/proc/{self.process.pid}/task")
        deadline = time.monotonic() + NODE_ANSWERS_WITHIN
        while not all("\nState:\tT" in (task / "status").read_text() for task in tasks.iterdir()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}'s service did not stop")
            time.sleep(0.01)

    def resume(self) -> None:
        """The hung service goes on (SIGCONT), answering what waited meanwhile."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def container_processes(self) -> list[int]:
        """The conmon and the main process of each container the node's storage says runs."""
        ids = self.podman("ps", "-q").split()
        if not ids:
            return []
        listed = self.podman("inspect", "--format", "{{.State.ConmonPid}} {{.State.Pid}}", *ids)
        return [int(pid) for pid in listed.split() if int(pid) > 0]

    def power_off(self) -> list[int]:
        """Everything of the node dies at the same instant, as on a machine that lost its power:
        its service, each container's conmon and each container (SIGKILL to a container's first
        process ends its whole PID namespace). All are stopped first, so none sees another die
        and cleans up after it (conmon would record the container's exit). Returns the container
        processes it ended."""
        victims = self.container_processes()
        group = self.process.pid if self.process is not None else None
        for kill in (signal.SIGSTOP, signal.SIGKILL):
            if group is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, kill)
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, kill)
        if self.process is not None:
            self.process.wait(timeout=30)
        self.process = None
        return victims

    def remove(self) -> None:
        """Its containers, images, service and storage's mounts."""
        self.podman("rm", "-af", "-t", "0", check=False)
        self.podman("rmi", "-af", check=False)
        self.kill()
        mounts = subprocess.run(
            ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False
        ).stdout.split()
        for mount in sorted((m for m in mounts if m.startswith(str(self.base))), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


@contextlib.contextmanager
def private_node(name: str, prefix: str) -> Iterator[PrivateNode]:
    """A started node named `name` over a fresh directory (`prefix`: say whose), removed with
    its directory afterwards, resumed first if the test left it hung."""
    base = Path(tempfile.mkdtemp(prefix=f"bindery-{prefix}-"))
    node = PrivateNode(name, base)
    try:
        node.start()
        yield node
    finally:
        node.resume()
        node.remove()
        shutil.rmtree(base, ignore_errors=True)
