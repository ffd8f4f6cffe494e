#!/usr/bin/env bash
# The suite but the end-to-end tests under each other supported Python found on this machine,
# each in its own virtualenv (.venv-3.12, .venv-3.13) with the tap and its test dependencies.
# The whole suite, lint and types run under the default Python: `bash scripts/test.sh`.
#
#   bash scripts/test-pythons.sh               # 3.12 and 3.13, those found
#   bash scripts/test-pythons.sh 3.13 -- -x    # one version; pytest options after --
#
# An interpreter is looked for as pythonX.Y on PATH, then under pyenv's versions; one that is
# not found is skipped with a line saying so, unless REQUIRE_PYTHONS=1 (then it fails).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
versions=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do versions+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
[ ${#versions[@]} -gt 0 ] || versions=(3.12 3.13)

find_python() {  # find_python X.Y: print an interpreter that really is Python X.Y
  local version=$1 candidate
  for candidate in "python$version" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version"; do
    if "$candidate" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$version')" 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

status=0
for version in "${versions[@]}"; do
  if ! python=$(find_python "$version"); then
    echo "test-pythons: Python $version not found (pythonX.Y on PATH or pyenv): skipped" >&2
    if [ "${REQUIRE_PYTHONS:-}" = 1 ]; then status=1; fi
    continue
  fi
  venv=.venv-$version
  start=$SECONDS
  echo "test-pythons: Python $version ($python) into $venv, then pytest -m 'not e2e'" >&2
  if [ ! -x "$venv/bin/python" ]; then "$python" -m venv "$venv"; fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
  if ! "$venv/bin/python" -m pytest -m "not e2e" -n 4 --dist loadgroup "$@"; then status=1; fi
  echo "test-pythons: Python $version done in $((SECONDS - start)) s" >&2
done
exit $status
