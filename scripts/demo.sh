#!/usr/bin/env bash
# The whole loop on this machine: seed a sample database, back it up to a local-disk repository,
# list the backups, run a restore drill into a staging database, and show the status.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
opskit=".venv/bin/opskit --config demo/opskit.toml"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p demo
step "seeding database opskit_demo on $PGHOST:$PGPORT"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS opskit_demo WITH (FORCE)" -c "CREATE DATABASE opskit_demo"
psql -X -q -d opskit_demo -v ON_ERROR_STOP=1 -f scripts/demo-seed.sql

cat > demo/opskit.toml <<TOML
# Written by 'make demo'. See config.example.toml for every key.
[objectives]
rpo = "1h"
rto = "4h"

[targets.demo]
dsn = "postgresql://$PGUSER@$PGHOST:$PGPORT/opskit_demo"
storages = ["local"]
staging = "staging"
fingerprint_tables = ["public.orders"]

[targets.staging]
dsn = "postgresql://$PGUSER@$PGHOST:$PGPORT/postgres"

[storages.local]
url = "file://$PWD/demo/backups"
TOML

step "opskit backup now"
$opskit backup now --target demo --label demo
step "opskit backup list"
$opskit backup list --target demo
step "opskit drill restore (restore into staging, check against the manifest, measure RTO)"
$opskit drill restore --target demo --report-dir demo/reports
step "opskit status"
status=0
$opskit status --target demo || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 6 ]; then exit "$status"; fi
printf '\nDone. Backups are in demo/backups, drill reports in demo/reports.\n'
