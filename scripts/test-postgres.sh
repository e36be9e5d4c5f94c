#!/usr/bin/env bash
# Install (from Debian's packages) and start a throwaway PostgreSQL for the store tests,
# then print the MODELPLANE_TEST_PG_URL to use. Needs root (CI runs as root).
# Usage: export MODELPLANE_TEST_PG_URL="$(scripts/test-postgres.sh)"
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "==> installing PostgreSQL from Debian's packages" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
fi
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
data="${MODELPLANE_TEST_PG_DATA:-/tmp/modelplane-test-pg}"
port="${MODELPLANE_TEST_PG_PORT:-55432}"

if [ ! -f "$data/PG_VERSION" ]; then
  mkdir -p "$data"
  chown postgres:postgres "$data"
  su postgres -c "$bin/initdb -D '$data' -A trust -U postgres" >&2
fi
if ! su postgres -c "$bin/pg_ctl -D '$data' status" >/dev/null 2>&1; then
  su postgres -c "$bin/pg_ctl -D '$data' -l '$data/server.log' -w -o '-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off' start" >&2
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
