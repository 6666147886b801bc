"""What every benchmark writes: its report, with the machine it ran on, in bench/results/.

In: a benchmark's name and its report (a dict, its anchor's numbers beside its own).
Out: bench/results/<name>.json (the report, plus `machine` and `time` when it has none), and the
part of it a person reads first on stdout.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on: they mean little without it (2 busy cores and 2 idle
    ones give different answers), so the load at the end is part of it."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": os.getloadavg(),
    }


def write_report(name: str, report: dict[str, Any], shown: Any = None) -> Path:
    """Write `report` to bench/results/<name>.json and print `shown` (default: all of it)."""
    report.setdefault("machine", machine())
    report.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report if shown is None else shown, indent=2))
    return path


def percentile(values: list[float], q: float) -> float:
    """The `q` (0 to 1) quantile of `values`, interpolated between its two nearest values, as
    `statistics.quantiles(method="inclusive")` and numpy's default do: every bench's p50, p90 and
    p99 mean the same. NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below, above = ordered[math.floor(position)], ordered[math.ceil(position)]
    return below + (above - below) * (position - math.floor(position))
