#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on $PGHOST:$PGPORT (default 127.0.0.1:5432):
# uses a running one, else starts the machine's cluster with pg_ctlcluster.
set -euo pipefail
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}

if pg_isready -q -h "$host" -p "$port"; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -n | tail -n 1)
  echo "starting PostgreSQL $version (pg_ctlcluster)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h "$host" -p "$port" && exit 0
    sleep 1
  done
fi
echo "no PostgreSQL answers on $host:$port; start one (or set PGHOST/PGPORT) and run again" >&2
exit 3
