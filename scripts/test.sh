#!/usr/bin/env bash
# Set up .venv with the dev extras if needed, lint, then run the whole test suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m unit` for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
