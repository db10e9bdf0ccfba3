"""Options that several commands share, declared once as argparse parent parsers (`parents=[...]`)."""

from __future__ import annotations

import argparse


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def model_folder() -> argparse.ArgumentParser:
    """The positional MODEL_DIR."""
    parser = _parent()
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a Smolite model folder")
    return parser


def allow_pickle() -> argparse.ArgumentParser:
    parser = _parent()
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pytorch_model.bin (pickle) weights; only for files you trust")
    return parser


def device_and_dtype() -> argparse.ArgumentParser:
    parser = _parent()
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    return parser


def loaded_model() -> list[argparse.ArgumentParser]:
    """MODEL_DIR loaded for generation: the folder, where and in which dtype, and whether pickle weights may load."""
    return [model_folder(), device_and_dtype(), allow_pickle()]


def seed(help: str) -> argparse.ArgumentParser:
    parser = _parent()
    parser.add_argument("--seed", type=int, help=help)
    return parser


def data_files(default: str | None = None) -> argparse.ArgumentParser:
    """Conversation (or text) files — required unless `default` says what is used without them — and whether
    malformed lines are skipped."""
    parser = _parent()
    parser.add_argument("--data", nargs="+", required=default is None, metavar="FILE",
                        help=f"default: {default}" if default else None)
    parser.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines")
    return parser


__all__ = ["allow_pickle", "data_files", "device_and_dtype", "loaded_model", "model_folder", "seed"]
