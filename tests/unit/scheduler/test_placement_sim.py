"""The placement simulation (bench/placement_sim.py) runs the scheduler's own code, and a seeded
run is the same every time."""

from __future__ import annotations

import pytest

from bench.placement_sim import (
    GiB,
    Result,
    Workload,
    bindery_policy,
    kube_default_policy,
    scheduler_settings,
    simulate,
)
from bindery.scheduler.cluster import Choice, Cluster
from bindery.scheduler.launch import Scheduler

TINY = Workload(
    nodes=6,
    node_memory=4 * GiB,
    repos=60,
    launches=300,
    arrival_rate=0.05,
    session_median=120.0,
    node_lifetime=3600.0,
    seed=7,
)


def run(work: Workload = TINY, prepull: bool = True) -> Result:
    return simulate(work, bindery_policy, scheduler_settings(work, prepull))


def summary(result: Result) -> tuple[object, ...]:
    return (
        tuple((o.image, o.pulled, o.ready, o.failed) for o in result.outcomes),
        result.pulled_bytes,
        result.nodes_replaced,
    )


def no_pull(result: Result) -> int:
    return sum(1 for o in result.outcomes if not o.pulled)


def test_a_seeded_run_is_the_same_every_time() -> None:
    first, second = run(), run()
    assert summary(first) == summary(second)
    assert all(o.ready is not None or o.failed for o in first.outcomes)
    assert first.nodes_replaced > 0  # churn happened


def test_the_outcome_follows_the_schedulers_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    before = run()

    def blind(self: Cluster, image: str, reservation: int) -> Choice | None:
        """Ignore where the image is: the emptiest node with room."""
        fitting = [n for n in self.capacity if self.free(n) >= reservation]
        if not fitting:
            return None
        best = min(fitting, key=lambda n: (-self.free(n), n))
        return Choice(best, best in self.holding(image))

    monkeypatch.setattr(Cluster, "choose", blind)
    assert no_pull(run()) < no_pull(before)


def test_the_outcome_follows_the_schedulers_prepulls(monkeypatch: pytest.MonkeyPatch) -> None:
    before = run()

    async def nothing(self: Scheduler) -> None:
        pass

    monkeypatch.setattr(Scheduler, "prepull", nothing)
    after = run()
    assert no_pull(after) < no_pull(before)
    assert summary(after) == summary(run(prepull=False))


def test_the_kube_default_baseline_runs_the_same_launches() -> None:
    kube = simulate(TINY, kube_default_policy, scheduler_settings(TINY, prepull=False))
    assert [o.image for o in kube.outcomes] == [o.image for o in run().outcomes]
