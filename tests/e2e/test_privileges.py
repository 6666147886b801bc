"""Services that need no root don't run as root (issue "Contain strangers' code", point 8): the
started stack's resolver and archiver run as the unprivileged user, without capabilities or a way
to gain any, while the services that need root keep it. That a launch still works through them
is what the other end-to-end tests show."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.stack import SERVICES, UNPRIVILEGED, Stack, service_user


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_the_unprivileged_list() -> None:
    assert set(UNPRIVILEGED) == {"resolver", "archiver"}


@pytest.mark.parametrize("service", UNPRIVILEGED)
def test_runs_as_the_service_user_without_capabilities(stack: Stack, service: str) -> None:
    pid = stack.processes[service].pid
    # The service itself (setpriv execs it in place), not a wrapper.
    assert f"-m\0bindery.{service}\0" in Path(f"/proc/{pid}/cmdline").read_text()
    user = service_user()
    found = status(pid)
    assert found["Uid"].split() == [str(user.pw_uid)] * 4  # real, effective, saved, filesystem
    assert found["Gid"].split() == [str(user.pw_gid)] * 4
    assert found["Groups"].split() == [str(user.pw_gid)]
    assert user.pw_uid != 0
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(found[capabilities], 16) == 0, capabilities
    assert found["NoNewPrivs"] == "1", "setuid programs give it nothing"


@pytest.mark.parametrize("service", sorted(set(SERVICES) - set(UNPRIVILEGED)))
def test_the_services_that_need_root_keep_it(stack: Stack, service: str) -> None:
    assert status(stack.processes[service].pid)["Uid"].split()[1] == "0"


def test_the_archive_is_the_service_users(stack: Stack) -> None:
    archive = Path(stack.env["BINDERY_ARCHIVE_DIR"])
    assert archive.stat().st_uid == service_user().pw_uid
    assert archive.stat().st_mode & 0o077 == 0, "launch records are nobody else's to read"
