#!/usr/bin/env bash
# Run the whole test suite (unit, integration, e2e) as CI does. Expects `make install` and
# `scripts/infra.sh up` to have run (`make test` does both). Extra arguments go to pytest.
# JUnit XML: .bindery/test-results/junit.xml. "No tests collected" counts as a failure.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RESULTS="$REPO/.bindery/test-results"
mkdir -p "$RESULTS"

[ -x .venv/bin/pytest ] || { echo "[test] no .venv/bin/pytest: run make install" >&2; exit 1; }

.venv/bin/pytest tests -q -p no:cacheprovider --junitxml="$RESULTS/junit.xml" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "[test] ERROR: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
