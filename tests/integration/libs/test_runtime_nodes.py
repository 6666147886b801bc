"""The runtime's node checks against real podman nodes (what the gateway's /health asks): one
check per node, True for a node that answers, NodeUnreachable for one whose socket is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bindery.runtimes import NodeUnreachable, PodmanRuntime
from tests.support.stack import INSTANCE, NODES


async def test_each_podman_node_has_a_check_that_asks_it(tmp_path: Path) -> None:
    runtime = PodmanRuntime(INSTANCE, {**NODES, "gone": f"unix://{tmp_path}/gone.sock"})
    try:
        checks = runtime.node_checks()
        assert set(checks) == {*NODES, "gone"}
        for name in NODES:
            assert await checks[name]() is True, name
        with pytest.raises(NodeUnreachable, match="gone does not answer"):
            await checks["gone"]()
    finally:
        await runtime.close()
