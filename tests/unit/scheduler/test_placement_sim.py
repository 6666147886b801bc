"""The placement simulation (bench/placement_sim.py) runs the scheduler's own code (placement,
pre-pulls, on the simulation's clock), a seeded run is the same every time, and each pull at a
launch says why it happened."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.placement_sim import (
    GiB,
    Outcome,
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


def run(work: Workload = TINY, prepull: bool = True, **settings: object) -> Result:
    tuned = scheduler_settings(work).model_copy(update=settings)
    return simulate(work, bindery_policy, tuned, prepull)


def summary(result: Result) -> tuple[object, ...]:
    return (
        tuple((o.image, o.pulled, o.why, o.ready, o.failed) for o in result.outcomes),
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

    def nothing(self: Scheduler) -> list[object]:
        return []

    monkeypatch.setattr(Scheduler, "prepull", nothing)
    after = run()
    assert no_pull(after) < no_pull(before)
    assert summary(after) == summary(run(prepull=False))


def test_popularity_counts_on_the_simulations_clock() -> None:
    """A window of a minute is over many times in a simulated day, an hour's far fewer: the
    popular images differ (on the wall clock, the run's few seconds would keep every launch in
    both). The lead is the window, so the seats a count asks for do not differ."""
    minute = run(popularity_window=60.0, prepull_lead=60.0)
    assert summary(minute) != summary(run(popularity_window=3600.0, prepull_lead=3600.0))


def reasons(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(o.why for o in outcomes if o.pulled)


def test_every_pull_at_a_launch_says_why() -> None:
    result = run(prepull=False)
    seen: set[str] = set()
    for outcome in result.outcomes:
        assert outcome.pulled == bool(outcome.why)
        first = outcome.image not in seen
        seen.add(outcome.image)
        assert (outcome.why == "first_launch") == first, "only a repository's first launch"
    why = reasons(result.outcomes)
    assert set(why) <= {"first_launch", "churn", "full", "in_flight"}
    assert why["churn"] > 0 and why["full"] > 0, "nodes leave and fill up in this workload"


def test_prepulls_keep_images_through_churn_and_full_holders() -> None:
    without, with_ = reasons(run(prepull=False).outcomes), reasons(run().outcomes)
    assert with_["first_launch"] == without["first_launch"], "no placement avoids these"
    assert with_["churn"] < without["churn"]
    assert with_["full"] < without["full"]


def test_the_kube_default_baseline_runs_the_same_launches() -> None:
    kube = simulate(TINY, kube_default_policy, scheduler_settings(TINY), prepull=False)
    assert [o.image for o in kube.outcomes] == [o.image for o in run().outcomes]
