#!/usr/bin/env bash
# Create .venv and install modelplane into it (with the dev extras when asked).
# Idempotent: re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
if [ -z "$python_bin" ] || ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "modelplane needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$python_bin" --version)"
  "$python_bin" -m venv .venv
fi

spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.modelplane-install-$(echo "$extras" | tr ',' '-')"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "==> installing modelplane ($spec) into .venv; the first time takes a few minutes"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned in pyproject.toml to the CPU build; install it first so that no other
# package's looser requirement can pull a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e "$spec"
echo "==> compiling the monitoring kernels into Numba's cache (about half a minute, once)"
.venv/bin/python -c "from kernels import warmup; warmup()"
echo "$want" > "$stamp"
echo "==> .venv ready"
