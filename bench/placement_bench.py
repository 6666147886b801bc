"""Placement benchmark: does a launch at mybinder.org scale find its image already on its node?
Writes bench/results/placement.json.

`bench/placement_sim.py` drives the scheduler's own placement and pre-pull code over a simulated
cluster of 100 nodes (see its docstring and `Workload` for every assumption): 10,000 repositories
launched with Zipf popularity, images of 1-5 GB, pulls at each node's bandwidth, sessions that
fill and free the seats, nodes leaving with their images and fresh ones joining. The anchor, in
the same run over the same launches: kube-scheduler's default scoring (NodeResourcesFit
LeastAllocated + ImageLocality), without pre-pulls.

Reported after the first 20 % of launches (the cluster starts with no image anywhere): the share
of launches that needed no pull, why the others pulled (`pulled_because`, shares of the counted
launches: the repository's first launch, every holder gone through churn, every holder full,
the image's first pull not finished yet), the bytes pulled (at launch and by pre-pulls), and the
time from the scheduler's order to a ready session (queueing, pull = size / bandwidth behind the
node's other pulls, start floor). Beside them, `no_pull_bound`: the share no placement could
beat on this workload (1 - the first launches' share: a repository's first launch needs a pull
whatever the policy). Goal: >= 90 % of launches need no pull. 60,000 launches by default
(`BENCH_LAUNCHES`): over 20,000 first launches alone are more than a tenth, so the goal could
not be judged there. `wall_s`: the whole run's time, both policies.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from placement_sim import (
    Outcome,
    Policy,
    Workload,
    bindery_policy,
    kube_default_policy,
    scheduler_settings,
    simulate,
)
from reporting import percentile, write_report

from bindery import logs

REPO = Path(__file__).resolve().parents[1]
LAUNCHES = int(os.environ.get("BENCH_LAUNCHES", "60000"))
REASONS = ("first_launch", "churn", "full", "in_flight")
GOAL_NO_PULL = 0.9


def measure(
    work: Workload, policy: Policy, prepull: bool
) -> tuple[dict[str, object], list[Outcome]]:
    """The policy's figures, and every launch's outcome in arrival order."""
    cpu = time.process_time()
    result = simulate(work, policy, scheduler_settings(work), prepull)
    cpu = time.process_time() - cpu
    counted = result.outcomes[int(len(result.outcomes) * work.warmup) :]
    times = [o.ready for o in counted if o.ready is not None]
    reasons = Counter(o.why for o in counted if o.pulled)
    figures = {
        "launches_counted": len(counted),
        "no_pull_share": round(sum(not o.pulled for o in counted) / len(counted), 4),
        "pulled_because": {why: round(reasons[why] / len(counted), 4) for why in REASONS},
        "failed": sum(1 for o in counted if o.failed),
        "launch_s": {
            "p50": round(percentile(times, 0.50), 2),
            "p90": round(percentile(times, 0.90), 2),
            "p99": round(percentile(times, 0.99), 2),
            "mean": round(statistics.fmean(times), 2),
        },
        "pulled_tb": {
            "total": round(result.pulled_bytes / 1e12, 3),
            "at_launch": round(result.launch_pulled_bytes / 1e12, 3),
            "pre_pulls": round((result.pulled_bytes - result.launch_pulled_bytes) / 1e12, 3) or 0.0,
        },
        "nodes_replaced": result.nodes_replaced,
        "cpu_s": round(cpu, 1),
    }
    return figures, result.outcomes


def no_pull_bound(work: Workload, outcomes: list[Outcome]) -> float:
    """The best share of counted launches any placement could serve without a pull.

    A launch of a repository launched never before in the run finds its image on no node,
    whatever the placement: nothing told any node to hold it (pre-pulls follow past launches;
    only an oracle knowing the future could pull first). Every later launch could, at best,
    find a node holding its image with a free seat (the simulated nodes' disks keep every image,
    so a policy pulling each image to every node would lose none to eviction or churn). So this
    bounds the no-pull share from above for this workload, however placement is done.
    """
    seen: set[str] = set()
    first_launches = []
    for outcome in outcomes:
        first_launches.append(outcome.image not in seen)
        seen.add(outcome.image)
    counted = first_launches[int(len(first_launches) * work.warmup) :]
    return round(1 - sum(counted) / len(counted), 4)


def main() -> int:
    logs.configure("scheduler", "json", "critical")  # a line per launch would dominate the CPU
    work = Workload(launches=LAUNCHES)
    wall = time.monotonic()
    bindery, outcomes = measure(work, bindery_policy, prepull=True)
    anchor, _ = measure(work, kube_default_policy, prepull=False)
    wall = time.monotonic() - wall
    bound = no_pull_bound(work, outcomes)
    report = {
        "benchmark": "placement",
        "anchor": "kube-scheduler default scoring (NodeResourcesFit LeastAllocated + "
        "ImageLocality, equal weights), no pre-pulls, same launches",
        "setup": __doc__,
        "workload": dataclasses.asdict(work),
        "results": {
            "bindery": bindery,
            "kube_default": anchor,
            "no_pull_bound": bound,
            "wall_s": round(wall, 1),
        },
        "goal": {
            "no_pull_share": GOAL_NO_PULL,
            "met": bool(bindery["no_pull_share"] >= GOAL_NO_PULL),  # type: ignore[operator]
            "reachable": bound >= GOAL_NO_PULL,
        },
    }
    write_report("placement", report, shown=report["results"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
