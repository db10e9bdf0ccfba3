"""The `smolite` command line: one module per command (as `transformers/cli/`), each with `register(commands)`, which
adds its subparser, and `run(args) -> int`; the options several commands share are in `_options`."""

from __future__ import annotations

import argparse
import sys

from . import chat, convert, evaluate, push, serve, train, train_tokenizer

COMMANDS = (convert, train_tokenizer, train, evaluate, chat, serve, push)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smolite", description="Smolite for the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
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


__all__ = ["COMMANDS", "build_parser", "main"]
