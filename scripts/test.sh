#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest in one process (e.g. `scripts/test.sh -m unit` for the fast
# tier, or a file). Without arguments the suite runs in two steps: on every core
# (pytest-xdist), the unit tier and the tests marked no_ray (real server processes, no Ray),
# which one process at a time would leave a core idle; then everything else in one process,
# where the integration tests share one Ray for the session. Both steps run; the status is
# the first failure's.
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
echo "==> the unit tier and the tests without Ray on $workers processes, then the rest"
status=0
# --dist loadfile: a module's tests share its server (a module fixture) and may build on
# each other, so one worker runs all of a module's tests, in order.
.venv/bin/python -m pytest -n "$workers" --dist loadfile -m "unit or no_ray" tests || status=$?
rest=0
.venv/bin/python -m pytest -m "not no_ray" tests --ignore=tests/unit || rest=$?
[ "$status" -ne 0 ] || status=$rest
exit "$status"
