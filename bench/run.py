"""`make bench`: run every `*_bench.py` script in bench/ (each writes bench/results/<name>.json).

Each benchmark measures its anchor in the same run (raw `podman run`, configurable-http-proxy,
a plain pip build), so the JSON holds both numbers side by side. How long each one took, and the
whole run against its budget (30 minutes on a 2-core machine), goes to bench/results/run.json.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from reporting import RESULTS_DIR, write_report

HERE = Path(__file__).resolve().parent
BUDGET_S = 30 * 60


def main() -> int:
    scripts = sorted(HERE.glob("*_bench.py"))
    failed = []
    seconds: dict[str, float] = {}
    started = time.monotonic()
    for script in scripts:
        print(f"[bench] {script.name}", flush=True)
        began = time.monotonic()
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
        seconds[script.name] = round(time.monotonic() - began, 1)
    total = round(time.monotonic() - started, 1)
    write_report(
        "run",
        {
            "benchmark": "make bench",
            "seconds": seconds,
            "total_s": total,
            "budget_s": BUDGET_S,
            "within_budget": total <= BUDGET_S,
            "failed": failed,
        },
    )
    for result in sorted(RESULTS_DIR.glob("*.json")):
        print(f"[bench] results: {result.relative_to(HERE.parent)}")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
