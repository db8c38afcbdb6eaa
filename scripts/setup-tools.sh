#!/usr/bin/env bash
# Installs the command-line tools opskit's tests and recipes use, when missing:
# PostgreSQL client tools, zstd and age (Debian packages), promtool (Debian's prometheus, for the
# alert-rule tests), and Azurite (npm) for the Azure tests.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v age >/dev/null || missing+=(age)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "please install: ${missing[*]} (tests that need them are skipped)" >&2
  fi
fi

# promtool is optional (only tests/deploy/test_alerts.py needs it): a failed install skips those tests.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing prometheus for promtool (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
      >/dev/null 2>&1 || echo "apt-get could not install prometheus; the promtool tests will be skipped" >&2
  else
    echo "promtool is missing (Debian package prometheus); the promtool tests will be skipped" >&2
  fi
fi

azurite=.tools/azurite/node_modules/.bin/azurite-blob
if [ ! -x "$azurite" ]; then
  if command -v npm >/dev/null; then
    echo "installing azurite@3.35.0 into .tools/azurite (npm)"
    npm install --silent --no-save --no-audit --no-fund --prefix .tools/azurite azurite@3.35.0 >/dev/null 2>&1 \
      || echo "npm could not install azurite; the Azure tests will be skipped" >&2
  else
    echo "npm is missing; the Azure tests will be skipped" >&2
  fi
fi

# The PostgreSQL version matrix (servers 13-18, client tools 17 and 18) for tests/versions/.
scripts/setup-pg-versions.sh || echo "the PostgreSQL version matrix could not be installed; its tests will be skipped" >&2
