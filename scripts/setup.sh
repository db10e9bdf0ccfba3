#!/usr/bin/env bash
# Install smolite_hf (editable) with the given extras, e.g. `bash scripts/setup.sh test`.
# torch: an installed torch is kept (GPU users: install your CUDA/ROCm build first, see the README);
# otherwise torch==2.13.0 is installed, whose CPU wheel avoids several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
extras=${1:-}
"$PYTHON" -m pip install --quiet -e ".${extras:+[$extras]}"
