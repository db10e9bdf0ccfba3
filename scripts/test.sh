#!/usr/bin/env bash
# Install the test dependencies and run the whole suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${PYTHON:-python3}" -m pytest "$@"
