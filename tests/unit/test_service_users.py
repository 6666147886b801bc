"""Who runs as whom: scripts/services.sh and the test stack (tests/support/stack.py) run the same
services as the same unprivileged user in the same way, and none of them needs root."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.support.stack import AS_USER, SERVICE_USER, SERVICES, UNPRIVILEGED

REPO = Path(__file__).resolve().parents[2]
SERVICES_SH = (REPO / "scripts/services.sh").read_text()


def shell_value(name: str, script: str = SERVICES_SH) -> str:
    """The right-hand side of `NAME=...` at the start of a line of `script`."""
    found = re.search(rf"^{name}=(.*)$", script, re.MULTILINE)
    assert found is not None, f"the script sets {name}"
    return found.group(1)


def shell_array(name: str) -> list[str]:
    """The words of `NAME=(...)`, with $SERVICE_USER replaced by its value."""
    value = shell_value(name)
    assert value.startswith("(") and value.endswith(")"), value
    words = shlex.split(value[1:-1])
    return [word.replace("$SERVICE_USER", shell_value("SERVICE_USER")) for word in words]


def test_the_test_stack_runs_the_same_services_unprivileged() -> None:
    assert shell_array("UNPRIVILEGED") == list(UNPRIVILEGED)
    assert set(UNPRIVILEGED) <= set(SERVICES)


def test_as_the_same_user_in_the_same_way() -> None:
    assert shell_value("SERVICE_USER") == SERVICE_USER
    assert shell_array("AS_USER") == list(AS_USER)
    assert "--no-new-privs" in AS_USER


def test_install_creates_that_user() -> None:
    install = (REPO / "scripts/install.sh").read_text()
    assert shell_value("SERVICE_USER", install) == SERVICE_USER
    assert 'useradd --system --user-group --home-dir "$SERVICE_HOME"' in install


def test_no_unprivileged_service_needs_the_node_sockets_or_the_sandbox() -> None:
    """The podman node sockets are root's (and root-equivalent); the build sandbox needs root."""
    for service in UNPRIVILEGED:
        root = REPO / "services" / service / "src" / "bindery" / service
        for path in root.rglob("*.py"):
            text = path.read_text()
            for needs_root in ("make_runtime(", "PodmanRuntime(", "setpriv", "cgroups"):
                assert needs_root not in text, f"{path.relative_to(REPO)} uses {needs_root}"
