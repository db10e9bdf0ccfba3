"""`smolite train-tokenizer`: a Smolite (Unigram) tokenizer trained on text or conversation files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..configuration_smolite import SmoliteConfig
from ._options import data_files


def register(commands) -> None:
    parser = commands.add_parser(
        "train-tokenizer",
        parents=[data_files()],
        help="train a Smolite (Unigram) tokenizer on text or conversation files",
        description="Train a SentencePiece-style Unigram tokenizer with Smolite's normalisation and special pieces "
        "(<pad> 0, <unk> 1, <start> 2, <sep> 3, <end> 4). Conversation files (.jsonl, ShareGPT or messages format) "
        "contribute every message; other files every non-blank line.",
    )
    parser.add_argument("--vocab-size", type=int, required=True, metavar="N")
    parser.add_argument("--output-dir", required=True, metavar="DIR")
    parser.add_argument("--model-max-length", type=int, default=SmoliteConfig().max_position_embeddings, metavar="N")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import read_texts
    from ..tokenization_smolite import SmoliteTokenizer, VocabularySizeError

    output_dir = Path(args.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite:
        raise ValueError(f"{output_dir}: the output folder exists and is not empty; pass --overwrite to replace it.")
    texts = list(read_texts(args.data, skip_bad_lines=args.skip_bad_lines))
    try:
        tokenizer = SmoliteTokenizer.train(texts, vocab_size=args.vocab_size, model_max_length=args.model_max_length)
    except VocabularySizeError as err:
        raise ValueError(err.describe("--vocab-size")) from None
    tokenizer.save_pretrained(output_dir)
    print(f"Trained a {len(tokenizer)}-piece tokenizer on {len(texts)} texts -> {output_dir}")
    return 0
