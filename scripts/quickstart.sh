#!/usr/bin/env bash
# The main job on a fresh machine: install smolite_hf, train a small Smolite on the bundled Korean conversations,
# then answer a prompt. About 2-3 minutes of training on 2 CPU cores. Override RUN_DIR or PROMPT if you like.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
PROMPT=${PROMPT:-"주말에 뭐 하면 좋을까?"}
smolite train --output-dir "$RUN_DIR" --epochs 12 --learning-rate 5e-4 --overwrite
echo
echo "you> $PROMPT"
printf 'smolite> '
smolite chat "$RUN_DIR" --prompt "$PROMPT" --seed 0
