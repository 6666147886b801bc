"""`make bench`: run every `*_bench.py` script in bench/ (each writes bench/results/<name>.json).

Each benchmark measures its anchor in the same run (raw `podman run`, configurable-http-proxy,
a plain pip build), so the JSON holds both numbers side by side.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("*_bench.py"))
    failed = []
    for script in scripts:
        print(f"[bench] {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    for result in sorted((HERE / "results").glob("*.json")):
        print(f"[bench] results: {result.relative_to(HERE.parent)}")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
