#!/usr/bin/env bash
# Install the test dependencies and run the whole suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The browser test (tests/test_serve_browser.py) drives Debian's Chromium; a Korean font makes its screenshot legible.
# Installed here when missing and apt-get can run (as root or with passwordless sudo); otherwise that test is skipped.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! fc-list 2>/dev/null | grep -qi nanum; then
    apt=""
    if [ "$(id -u)" = 0 ]; then apt="apt-get"; elif sudo -n true 2>/dev/null; then apt="sudo -n apt-get"; fi
    if [ -n "$apt" ] && command -v apt-get >/dev/null; then
        $apt update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $apt install -y -qq chromium chromium-driver fonts-nanum >/dev/null \
            || echo "scripts/test.sh: could not install chromium; the browser test will be skipped" >&2
    else
        echo "scripts/test.sh: apt-get needs root to install chromium; the browser test will be skipped" >&2
    fi
fi
exec "${PYTHON:-python3}" -m pytest "$@"
