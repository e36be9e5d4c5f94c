#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest in one process (e.g. `scripts/test.sh -m unit` for the fast
# tier, or a file). Without arguments the suite runs as two parts: the unit tier with the
# tests marked no_ray (real server processes, no Ray) on two pytest-xdist processes a core,
# at most 4 (on 2 cores, one process a core left a third of the CPU idle while tests waited
# on their servers and subprocesses: 518 s, against 380 s with four); and the rest, the Ray
# tier.
#
# On fewer than 4 cores the two parts run at once, the unit part at the lowest CPU and I/O
# priority: the Ray tier's closed-loop tests time latencies, steps and leases, and leave
# about a third of both cores idle while jobs start and rollout windows pass (31% over the
# quickstart and the training jobs); the unit part, CPU-bound, takes that idle time and
# yields the moment a Ray-tier process wants a core. Two Ray-tier streams at equal priority
# starved those timed tests on 2 cores (a latency rollback, a pipeline's benchmark stage and
# the console's live pages failed that way in CI), so the Ray tier stays one stream there.
# With 4 cores or more the unit part runs first, then the Ray tier in two pytest processes
# at once (`--ray-stream`, tests/conftest.py): one running the tests on the session's Ray,
# the other the modules that start their own Ray head. Every part runs; the status is the
# first failure's; a part run in the background has its output shown after the other's.
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
# --dist loadfile: a module's tests share its server (a module fixture) and may build on
# each other, so one worker runs all of a module's tests, in order. No reordering: the
# collection's order (tests/conftest.py) starts the longest waits first.
unit_tier=(-n "$workers" --dist loadfile --no-loadscope-reorder -m "unit or no_ray" tests)
ray_tier=(-m "not no_ray" tests --ignore=tests/unit)
status=0
# run_beside LABEL COMMAND...: COMMAND in the background, its output kept for later; sets
# beside_pid and beside_log. Interrupted, this script takes it with it.
run_beside() {
  local label="$1"
  shift
  beside_log="$(mktemp)"
  echo "==> $label runs in the background; its output follows the foreground's"
  "$@" >"$beside_log" 2>&1 &
  beside_pid=$!
  trap 'kill "$beside_pid" 2>/dev/null || true' EXIT
}
# finish_beside LABEL: waits for the background part, shows its output, folds in its status.
finish_beside() {
  local rest=0
  wait "$beside_pid" || rest=$?
  trap - EXIT
  echo "==> $1:"
  cat "$beside_log"
  rm -f "$beside_log"
  [ "$status" -ne 0 ] || status=$rest
}
if [ "$cores" -lt 4 ]; then
  echo "==> the Ray tier, and beside it the unit tier and the tests without Ray on $workers" \
       "processes at the lowest priority"
  run_beside "the unit tier and the tests without Ray" \
    nice -n 19 ionice -c 2 -n 7 .venv/bin/python -m pytest "${unit_tier[@]}"
  rest=0
  .venv/bin/python -m pytest "${ray_tier[@]}" || rest=$?
  status=$rest
  finish_beside "the unit tier and the tests without Ray"
  exit "$status"
fi
echo "==> the unit tier and the tests without Ray on $workers processes, then the rest"
.venv/bin/python -m pytest "${unit_tier[@]}" || status=$?
run_beside "the own-head stream of the Ray tier (--ray-stream=heads)" \
  .venv/bin/python -m pytest "${ray_tier[@]}" --ray-stream=heads
session=0
.venv/bin/python -m pytest "${ray_tier[@]}" --ray-stream=session || session=$?
[ "$status" -ne 0 ] || status=$session
finish_beside "the own-head stream (--ray-stream=heads)"
exit "$status"
