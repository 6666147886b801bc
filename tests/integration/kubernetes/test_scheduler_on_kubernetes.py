"""The scheduler, unchanged, launching through the Kubernetes runtime: it picks the node whose
`status.images` hold the image, the pod lands there, and the launch is ready once Jupyter answers
on the pod's IP with the session's token; when the kubelet reports the pod's server OOM-killed,
its watch ends the session with that reason. The API server is the schema-validating stand-in;
the "pod" is a Jupyter stand-in listening on a loopback address of its own, port 8888."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.config import kube_config

from bindery.events import Event, ImagePulling, PodReady, PodStopped, StopReason
from bindery.runtimes import KubernetesRuntime, make_runtime
from bindery.scheduler.launch import LaunchOrder, Scheduler
from bindery.scheduler.settings import SchedulerSettings
from tests.support.eventually import eventually
from tests.support.launches import launch_context
from tests.support.schedulerloops import running_loops
from tests.support.stack import SLOT
from tests.unit.runtimes.kube_api import FakeKubernetes, node

POD_IP = f"127.66.{SLOT}.1"
IMAGE = "registry.example:5000/bindery/demo:abc123"
REPO = "https://github.com/owner/demo"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetes]:
    fake = FakeKubernetes(
        nodes={"node-a": node("node-a"), "node-b": node("node-b", images=(IMAGE,))},
        ip_for=lambda _: POD_IP,
    )
    await fake.start()

    async def status(request: web.Request) -> web.Response:
        """Jupyter's answer: 200 only with the token the pod was started with."""
        pod = fake.pods.get(f"k8s-{request.match_info['name']}")
        env = pod["spec"]["containers"][0]["env"] if pod else []
        expected = {"name": "JUPYTER_TOKEN", "value": request.headers.get("Authorization", "")[6:]}
        return web.json_response({}, status=200 if expected in env else 403)

    app = web.Application()
    app.router.add_get("/user/{name}/api/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, POD_IP, 8888).start()
    yield fake
    await runner.cleanup()
    await fake.close()
    assert fake.invalid == []


async def test_a_launch_lands_on_the_node_holding_its_image_and_ends_when_its_server_does(
    api: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(api.kubeconfig(tmp_path)))
    settings = SchedulerSettings(
        runtime="kubernetes",
        instance="k8s",
        session_secret="s" * 32,
        startup_timeout=10,
    )
    runtime = await make_runtime(settings)
    assert isinstance(runtime, KubernetesRuntime)
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    async with aiohttp.ClientSession() as http:
        scheduler = await Scheduler.create(settings, runtime, publish, http)
        await scheduler.launch(LaunchOrder("launch1", IMAGE, launch_context(repo_url=REPO)))
        async with running_loops(scheduler, "exits"):
            [pod] = api.pods
            api.terminate(pod, 137, "OOMKilled")
            await eventually(
                lambda: any(isinstance(e, PodStopped) for e in events),
                within=30,
                what="a PodStopped",
            )
        await runtime.close()

    [stopped] = [e for e in events if isinstance(e, PodStopped)]
    assert (stopped.launch_id, stopped.reason) == ("launch1", StopReason.OOM)
    assert api.pods == {} and scheduler.cluster.seats == {}, "the pod is deleted, the seat free"

    [ready] = [e for e in events if isinstance(e, PodReady)]
    assert ready.node == "node-b" and ready.target == f"http://{POD_IP}:8888"
    assert not [e for e in events if isinstance(e, ImagePulling)]
    [body] = api.created
    assert body["spec"]["nodeName"] == "node-b"
    assert body["spec"]["containers"][0]["resources"]["limits"]["memory"] == str(2 * 1024**3)
