#!/usr/bin/env bash
# Install Debian's chromium for the console's browser tests (tests/integration/test_console.py
# drives it with Playwright, which cannot download its own browsers here), then print its
# path. Needs root to install (CI runs as root); exits non-zero when chromium is missing after.
# Usage: scripts/test-chromium.sh
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing chromium from Debian's packages" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
fi
command -v chromium
