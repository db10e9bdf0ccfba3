"""Options that several commands share, declared once as argparse parent parsers (`parents=[...]`)."""

from __future__ import annotations

import argparse
import importlib


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


# --------------------------------------------------------------------- what a command needs, checked before any work


def require(module: str, extra: str, feature: str) -> None:
    """`ValueError` (one line, exit code 2) saying what to install when the optional `module` a `feature` needs is
    not importable; `extra` is the smolite_hf extra that brings it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{feature} needs the {module.split('.')[0]} package{f' ({module})' if '.' in module else ''}, which is "
            f'not installed: pip install "smolite_hf[{extra}]"'
        ) from None


def available_devices() -> list[str]:
    """The devices this torch can use: cpu, and cuda:N / mps where present."""
    import torch

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | None) -> None:
    """`ValueError` naming the devices that exist when `--device` names one this torch does not have."""
    if device is None:
        return
    import torch

    devices = available_devices()
    try:
        wanted = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device}: not a device name; devices here: {', '.join(devices)}.") from None
    index = wanted.index if wanted.index is not None else 0
    if wanted.type == "cpu" or (wanted.type == "cuda" and f"cuda:{index}" in devices) or wanted.type in devices:
        return
    build = f" (torch {torch.__version__} has no CUDA)" if wanted.type == "cuda" and torch.version.cuda is None else ""
    raise ValueError(f"--device {device}: no such device here{build}; devices here: {', '.join(devices)}.")


__all__ = ["allow_pickle", "available_devices", "check_device", "data_files", "device_and_dtype", "loaded_model",
           "model_folder", "require", "seed"]
