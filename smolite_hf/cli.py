"""The `smolite` command line."""

from __future__ import annotations

import argparse
import sys


def _convert(args: argparse.Namespace) -> int:
    from .convert_smolite_keras_to_hf import convert_keras_to_hf

    output_dir = convert_keras_to_hf(
        args.keras_weights,
        args.output_dir,
        overwrite=args.overwrite,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"Converted {args.keras_weights} -> {output_dir} (logits checked against the Keras forward pass).")
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
    convert.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    convert.add_argument(
        "--max-position-embeddings",
        type=int,
        default=100,
        metavar="N",
        help="the window the model was trained on (not visible in the weights; 100 for every released size)",
    )
    convert.set_defaults(run=_convert)
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
