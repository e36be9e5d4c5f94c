#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest in one process (e.g. `scripts/test.sh -m unit` for the fast
# tier, or a file). Without arguments the suite runs in two steps, neither leaving a core
# idle while its tests wait on servers: the unit tier and the tests marked no_ray (real
# server processes, no Ray) on two pytest-xdist processes a core, at most 4 (on 2 cores,
# one process a core left a third of the CPU idle while tests waited on their servers and
# subprocesses: 518 s, against 380 s with four); then the rest, the Ray tier. With 4
# cores or more the tier runs in two pytest processes at once (`--ray-stream`,
# tests/conftest.py), one running the tests on the session's Ray, the other the modules that
# start their own Ray head; with fewer it runs in one: its closed-loop tests time latencies,
# steps and leases, and two streams on 2 cores starve them (a latency rollback, a pipeline's
# benchmark stage and the console's live pages failed that way in CI). Every step runs; the
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
cores="$(.venv/bin/python -c 'import os; print(len(os.sched_getaffinity(0)))')"
workers=$((2 * cores < 4 ? 2 * cores : 4))
echo "==> the unit tier and the tests without Ray on $workers processes, then the rest"
status=0
# --dist loadfile: a module's tests share its server (a module fixture) and may build on
# each other, so one worker runs all of a module's tests, in order. No reordering: the
# collection's order (tests/conftest.py) starts the longest waits first.
.venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder \
  -m "unit or no_ray" tests || status=$?
ray_tier=(-m "not no_ray" tests --ignore=tests/unit)
if [ "$cores" -lt 4 ]; then
  rest=0
  .venv/bin/python -m pytest "${ray_tier[@]}" || rest=$?
  [ "$status" -ne 0 ] || status=$rest
  exit "$status"
fi
heads_log="$(mktemp)"
echo "==> the Ray tier in two streams at once; the own-head stream's output follows the other's"
.venv/bin/python -m pytest "${ray_tier[@]}" --ray-stream=heads >"$heads_log" 2>&1 &
heads_pid=$!
# Interrupted, this script takes the background stream with it.
trap 'kill "$heads_pid" 2>/dev/null || true' EXIT
session=0
.venv/bin/python -m pytest "${ray_tier[@]}" --ray-stream=session || session=$?
heads=0
wait "$heads_pid" || heads=$?
trap - EXIT
echo "==> the own-head stream (--ray-stream=heads):"
cat "$heads_log"
rm -f "$heads_log"
for rest in "$session" "$heads"; do
  [ "$status" -ne 0 ] || status=$rest
done
exit "$status"
