"""`smolite convert`: original Keras weights -> a Hugging Face model folder."""

from __future__ import annotations

import argparse

from ..configuration_smolite import SmoliteConfig
from ._options import require


def register(commands) -> None:
    window = SmoliteConfig().max_position_embeddings
    parser = commands.add_parser(
        "convert",
        help="convert original Keras weights into a Hugging Face model folder",
        description="Convert original Smolite Keras weights (*.weights.h5) into a folder that "
        "AutoModelForCausalLM.from_pretrained loads. Sizes are read from the weight shapes.",
    )
    parser.add_argument("--keras-weights", required=True, metavar="FILE", help="the Keras *.weights.h5 file")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument(
        "--tokenizer", metavar="FILE", help="the original SentencePiece *.model, added to DIR (needs protobuf)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    parser.add_argument(
        "--max-position-embeddings",
        type=int,
        default=window,
        metavar="N",
        help=f"the window the model was trained on (not visible in the weights; {window} for every released size)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.tokenizer is not None:
        require("google.protobuf", "sentencepiece", "--tokenizer (reading a SentencePiece .model)")
    from ..convert_smolite_keras_to_hf import convert_keras_to_hf

    output_dir = convert_keras_to_hf(
        args.keras_weights,
        args.output_dir,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"Converted {args.keras_weights} -> {output_dir} (logits checked against the Keras forward pass).")
    return 0
