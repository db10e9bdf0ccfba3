"""The `smolite` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    from .convert_smolite_keras_to_hf import convert_keras_to_hf

    output_dir = convert_keras_to_hf(
        args.keras_weights,
        args.output_dir,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"Converted {args.keras_weights} -> {output_dir} (logits checked against the Keras forward pass).")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from .data import read_texts
    from .tokenization_smolite import SmoliteTokenizer

    output_dir = Path(args.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite:
        raise ValueError(f"{output_dir}: the output folder exists and is not empty; pass --overwrite to replace it.")
    texts = list(read_texts(args.data, skip_bad_lines=args.skip_bad_lines))
    tokenizer = SmoliteTokenizer.train(texts, vocab_size=args.vocab_size, model_max_length=args.model_max_length)
    tokenizer.save_pretrained(output_dir)
    print(f"Trained a {len(tokenizer)}-piece tokenizer on {len(texts)} texts -> {output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smolite", description="Smolite for the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert original Keras weights into a Hugging Face model folder",
        description="Convert original Smolite Keras weights (*.weights.h5) into a folder that "
        "AutoModelForCausalLM.from_pretrained loads. Sizes are read from the weight shapes.",
    )
    convert.add_argument("--keras-weights", required=True, metavar="FILE", help="the Keras *.weights.h5 file")
    convert.add_argument("--output-dir", required=True, metavar="DIR", help="the folder to write")
    convert.add_argument(
        "--tokenizer", metavar="FILE", help="the original SentencePiece *.model, added to DIR (needs protobuf)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    convert.add_argument(
        "--max-position-embeddings",
        type=int,
        default=100,
        metavar="N",
        help="the window the model was trained on (not visible in the weights; 100 for every released size)",
    )
    convert.set_defaults(run=_convert)

    train_tokenizer = commands.add_parser(
        "train-tokenizer",
        help="train a Smolite (Unigram) tokenizer on text or conversation files",
        description="Train a SentencePiece-style Unigram tokenizer with Smolite's normalisation and special pieces "
        "(<pad> 0, <unk> 1, <start> 2, <sep> 3, <end> 4). Conversation files (.jsonl, ShareGPT or messages format) "
        "contribute every message; other files every non-blank line.",
    )
    train_tokenizer.add_argument("--data", nargs="+", required=True, metavar="FILE")
    train_tokenizer.add_argument("--vocab-size", type=int, required=True, metavar="N")
    train_tokenizer.add_argument("--output-dir", required=True, metavar="DIR")
    train_tokenizer.add_argument("--model-max-length", type=int, default=100, metavar="N")
    train_tokenizer.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines")
    train_tokenizer.add_argument("--overwrite", action="store_true")
    train_tokenizer.set_defaults(run=_train_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"smolite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smolite {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
