#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it, editable, with
# the test extras.  Used by demo.sh and test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
log=$(mktemp)
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip setuptools wheel \
       && .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]'; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup failed: could not install the project into .venv" >&2
    exit 1
fi
rm -f "$log"
