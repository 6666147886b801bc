"""Image locality on two real podman nodes: launches go where the image is; when that node is
full, the next launch lands on the other node and pulls from the registry, visibly; afterwards
both nodes hold the image and no launch pulls again (issue 5, Done when: image locality)."""

from __future__ import annotations

from bindery.events import IdleDetected, ImagePulling, PodReady, PodScheduled, StopReason
from bindery.naming import session_name
from tests.integration.scheduler.conftest import MakeScheduler, drop_image

GiB = 1024**3


async def test_launches_follow_the_image_and_pull_only_when_its_node_is_full(
    make_scheduler: MakeScheduler, session_image: str
) -> None:
    drop_image("node-2", session_image)
    # Two sessions' reservations per node, so a third fills node-1's neighbour.
    h = await make_scheduler(node_memory=2 * GiB)

    for launch in ("A1", "A2"):
        await h.scheduler.launch(h.order(launch, session_image))
    assert [e.node for e in h.of(PodReady)] == ["node-1", "node-1"], h.events
    assert h.of(ImagePulling) == []

    await h.scheduler.launch(h.order("A3", session_image))
    pulls = h.of(ImagePulling)
    assert [(p.node, p.image) for p in pulls] == [("node-2", session_image)]
    assert h.of(PodReady)[-1].node == "node-2"
    assert await h.runtime.has_image("node-2", session_image)
    kinds = [type(e).__name__ for e in h.events if e.launch_id == "A3"]
    assert kinds == ["ImagePulling", "PodScheduled", "PodReady"], "the user sees `pulling` first"

    first = session_name("file:///srv/demo", "A1")
    await h.scheduler.stop(IdleDetected(launch_id="A1", session=first, reason=StopReason.IDLE))
    await h.scheduler.launch(h.order("A4", session_image))
    assert len(h.of(ImagePulling)) == 1, "both nodes hold the image now"
    assert h.of(PodScheduled)[-1].node in {"node-1", "node-2"}
    assert {s.node for s in await h.runtime.list_sessions()} == {"node-1", "node-2"}
    assert len(await h.runtime.list_sessions()) == 3
