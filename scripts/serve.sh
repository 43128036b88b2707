#!/usr/bin/env bash
# Start the service on models/default with the serving dependencies only (no torch): a virtualenv made from
# the project's own files on first use. Extra arguments go to `renersans serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
# Installed again when pyproject.toml changes, so a pulled dependency reaches an existing environment.
if [ ! -x .venv-serve/bin/renersans ] || [ pyproject.toml -nt .venv-serve/.installed ]; then
    python3 -m venv .venv-serve
    .venv-serve/bin/pip install --quiet --disable-pip-version-check -e '.[serve]'
    touch .venv-serve/.installed
fi
exec .venv-serve/bin/renersans serve "$@"
