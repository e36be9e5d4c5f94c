#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest in one process (e.g. `scripts/test.sh -m unit` for the fast
# tier, or a file). Without arguments the suite runs in two steps: the unit tier on every
# core (pytest-xdist; unit tests never touch Ray, and one process keeps one core busy), then
# everything else in one process, where the integration tests share one Ray for the session.
# Both steps run; the status is the first failure's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
.venv/bin/ruff check .
if [ -z "${MODELPLANE_TEST_PG_URL:-}" ]; then
  echo "==> MODELPLANE_TEST_PG_URL is unset: the PostgreSQL tests (marker 'postgres') will be"
  echo "    SKIPPED. To run them: export MODELPLANE_TEST_PG_URL=\"\$(scripts/test-postgres.sh)\""
fi
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
workers="$(.venv/bin/python -c 'import os; print(min(len(os.sched_getaffinity(0)), 4))')"
echo "==> the unit tier on $workers processes, then the integration and fault tiers"
status=0
.venv/bin/python -m pytest -n "$workers" tests/unit || status=$?
rest=0
.venv/bin/python -m pytest tests --ignore=tests/unit || rest=$?
[ "$status" -ne 0 ] || status=$rest
exit "$status"
