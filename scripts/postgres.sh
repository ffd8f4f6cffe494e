#!/usr/bin/env bash
# Install Debian's PostgreSQL server for the end-to-end tests, when it is missing and we can
# (root with apt-get, as in CI). Otherwise those tests skip, or fail when CI is set.
set -euo pipefail
if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "PostgreSQL is not installed and cannot be installed here (needs root and apt-get):" \
    "the PostgreSQL tests will be skipped." >&2
  exit 0
fi
echo "Installing PostgreSQL from Debian's packages for the end-to-end tests..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
