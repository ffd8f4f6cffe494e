#!/usr/bin/env bash
# Create .venv with the tap, its dev tools and Meltano. Sourced by the other scripts.
# Says on stderr what it installs and how long that took, so a first run is never silent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
_setup_step() {  # _setup_step "what, (how long)" command...: run a step, then say how long it took
  local what=$1 start=$SECONDS
  shift
  echo "setup: $what..." >&2
  "$@"
  echo "setup:   done in $((SECONDS - start)) s" >&2
}
if [ ! -x .venv/bin/python ]; then
  _setup_step "creating .venv with $(python3 --version) (a few seconds)" python3 -m venv .venv
fi
_setup_step "upgrading pip in .venv (a few seconds)" \
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
_setup_step "installing the tap (-e .), Meltano, pytest, ruff, mypy and build into .venv\
 (20 s to a minute on a fresh machine, seconds when up to date)" \
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
unset -f _setup_step
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true
