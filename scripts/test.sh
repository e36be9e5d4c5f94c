#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m unit` for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
.venv/bin/ruff check .
if [ -z "${MODELPLANE_TEST_PG_URL:-}" ]; then
  echo "==> MODELPLANE_TEST_PG_URL is unset: the PostgreSQL tests (marker 'postgres') will be"
  echo "    SKIPPED. To run them: export MODELPLANE_TEST_PG_URL=\"\$(scripts/test-postgres.sh)\""
fi
exec .venv/bin/python -m pytest "$@"
