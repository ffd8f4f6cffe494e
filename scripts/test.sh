#!/usr/bin/env bash
# Run every check: lint, types and the whole test suite (unit, HTTP, CLI, Meltano end to end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
bash scripts/postgres.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -n 4 --dist loadgroup "$@"  # 4 workers: most tests wait on a subprocess or a socket
