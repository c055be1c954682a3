#!/usr/bin/env bash
# Set up .venv, check lint and formatting (ruff, configured in
# pyproject.toml), and run the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-venv.sh
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -q "$@"
