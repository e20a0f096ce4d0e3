#!/usr/bin/env bash
# Set up, then lint (ruff check, ruff format --check) and run FLQ's whole test suite.
# Extra arguments go to pytest, e.g. the fast unit suite: bash scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
echo "[test] ruff check, ruff format --check"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -q "$@"
