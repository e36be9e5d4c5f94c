#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest in one process (e.g. `scripts/test.sh -m unit` for the fast
# tier, or a file). Without arguments the suite runs in two steps, each spread over
# processes (pytest-xdist), since one process at a time leaves a core idle while it waits
# on servers: on every core, the unit tier and the tests marked no_ray (real server
# processes, no Ray); then everything else on two, one of them running every test on the
# session's Ray, the other the modules that start their own Ray head. Both steps run; the
# status is the first failure's.
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
# each other, so one worker runs all of a module's tests, in order. No reordering: the
# collection's order (tests/conftest.py) starts the longest waits first.
.venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder \
  -m "unit or no_ray" tests || status=$?
rest=0
# --dist loadgroup: the groups tests/conftest.py gives (one for the session's Ray, one per
# module or package with its own head), the session's first.
.venv/bin/python -m pytest -n "$((workers < 2 ? workers : 2))" --dist loadgroup \
  --no-loadscope-reorder -m "not no_ray" tests --ignore=tests/unit || rest=$?
[ "$status" -ne 0 ] || status=$rest
exit "$status"
