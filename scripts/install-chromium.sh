#!/usr/bin/env bash
# Debian's Chromium for the page's browser test (tests/test_page.py), installed only where it is missing.
# It needs root and apt-get (as on CI); elsewhere this prints how to install it, and the test skips saying so.
set -euo pipefail
if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Chromium is missing, so the page's browser test will skip; install it with" \
        "'sudo apt-get install chromium' (Debian, Ubuntu)" >&2
    exit 0
fi
log=$(mktemp)
# fonts-dejavu-core: Cyrillic glyphs for the page and its screenshots on a minimal system.
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing Chromium with apt-get failed (above); the page's browser test needs it" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
echo "installed $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
