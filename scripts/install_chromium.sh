#!/usr/bin/env bash
# Debian's chromium for the report's browser test (tests/test_report_browser.py).
# Idempotent and quiet: does nothing when chromium is already on PATH; prints one line on failure.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_chromium.sh: chromium is missing and installing it needs root (apt-get)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: chromium is missing and this system has no apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq chromium; } >"$log" 2>&1; then
    echo "install_chromium.sh: apt-get install chromium failed: $(tail -n 1 "$log")" >&2
    exit 1
fi
