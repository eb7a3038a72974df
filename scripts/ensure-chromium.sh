#!/usr/bin/env bash
# tests/test_report.py opens report.html in headless Chromium (Debian's `chromium`) and
# fails, never skips, without one. Install it when it is missing and we may (root + apt).
set -euo pipefail
if [ -n "${LOCALLEARN_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 \
        || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the report test (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "note: no chromium and cannot apt-get it (not root?); tests/test_report.py will fail." \
         "Install chromium or set LOCALLEARN_CHROMIUM to a Chrome binary." >&2
fi
