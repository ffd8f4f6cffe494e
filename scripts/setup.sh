#!/usr/bin/env bash
# Create .venv with the tap, its dev tools and Meltano. Sourced by the other scripts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true
