#!/usr/bin/env bash
# The main job on a fresh machine: install smolite_hf, train a small Smolite on the bundled Korean conversations,
# then answer a prompt. About 5 minutes of training on 2 CPU cores (see the README). Override RUN_DIR or PROMPT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
PROMPT=${PROMPT:-"주말에 뭐 하면 좋을까?"}
# The recipe (README, "What the first command does"): the mini size with 3 layers and no dropout, a 1500-piece
# tokenizer, 1350 steps (about 8 epochs) at batch 32, learning rate 3e-3 with warm-up and cosine decay, one earlier
# pair as context; evaluated on the built-in test split.
smolite train --output-dir "$RUN_DIR" --size mini --config-overrides num_hidden_layers=3,hidden_dropout=0 \
    --vocab-size 1500 --max-steps 1350 --batch-size 32 --learning-rate 3e-3 --lr-scheduler-type cosine \
    --warmup-steps 30 --context-pairs 1 --overwrite
echo
echo "you> $PROMPT"
printf 'smolite> '
smolite chat "$RUN_DIR" --prompt "$PROMPT" --seed 0
