#!/usr/bin/env bash
# One command for the whole check: a virtualenv from the project's own files, lint, then the test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -k brat).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[serve,train,dev,ray]'
./scripts/install-chromium.sh  # Debian's Chromium for the page's browser test, when missing
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
