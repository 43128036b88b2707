#!/usr/bin/env bash
# Start the service on models/default with the serving dependencies only (no torch): a virtualenv made from
# the project's own files on first use. Extra arguments go to `renersans serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-serve/bin/renersans ]; then
    python3 -m venv .venv-serve
    .venv-serve/bin/pip install --quiet --disable-pip-version-check -e '.[serve]'
fi
exec .venv-serve/bin/renersans serve "$@"
