#!/usr/bin/env bash
# The main job on a fresh machine: install smolite_hf, train a small Smolite on the bundled Korean conversations,
# then answer a prompt. 6-13 minutes of training on 2 CPU cores (see the README). Override RUN_DIR or PROMPT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
PROMPT=${PROMPT:-"주말에 뭐 하면 좋을까?"}
# The recipe (README, "What the first command does"): the mini size, a 1500-piece tokenizer, 6 epochs at batch 32,
# learning rate 2e-3 with warm-up and cosine decay, one earlier pair as context; evaluated on the built-in test split.
smolite train --output-dir "$RUN_DIR" --size mini --vocab-size 1500 --epochs 6 --batch-size 32 \
    --learning-rate 2e-3 --lr-scheduler-type cosine --warmup-steps 30 --context-pairs 1 --overwrite
echo
echo "you> $PROMPT"
printf 'smolite> '
smolite chat "$RUN_DIR" --prompt "$PROMPT" --seed 0
