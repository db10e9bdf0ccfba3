"""`smolite serve MODEL_DIR`: the command's own options and what it runs.

The CLI declares the options every model command shares (`MODEL_DIR`, `--device`, `--dtype`, `--allow-pickle`), then
calls `add_arguments(parser)` for these, and `main(args)` to run. Nothing heavy is imported until `main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .limits import ServeLimits

LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEY_VARIABLE = "SMOLITE_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve-only options: address, access, limits."""
    defaults = ServeLimits()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", metavar="NAME",
                        help="the model id of /v1/models and of requests' `model` (default: the folder's name)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch intra-op threads (default: torch's, one per core); on a CPU shared with other "
                        "work, 1 avoids threads waiting for each other at every operation")
    access = parser.add_argument_group("access")
    access.add_argument("--api-key", metavar="KEY",
                        help=f"require Authorization: Bearer KEY on every route but / and /health "
                        f"(default: the {API_KEY_VARIABLE} environment variable; none if unset)")
    access.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages from ORIGIN (e.g. https://example.com) call the API; repeatable. "
                        "Requests from any other origin are refused")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-running", type=int, default=defaults.max_running, metavar="N",
                        help=f"requests decoded together in one batch (default {defaults.max_running})")
    limits.add_argument("--max-waiting", type=int, default=defaults.max_waiting, metavar="N",
                        help=f"requests queued behind them before 429 (default {defaults.max_waiting})")
    limits.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, metavar="N",
                        help=f"cap on a reply's new tokens; more is a 400 (default {defaults.max_new_tokens})")
    limits.add_argument("--max-message-chars", type=int, default=defaults.max_message_chars, metavar="N",
                        help=f"longest accepted message; longer is a 400 (default {defaults.max_message_chars})")
    limits.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, metavar="N",
                        help=f"largest accepted request body; larger is a 413 (default {defaults.max_body_bytes})")


def main(args: argparse.Namespace) -> int:
    """Run `smolite serve` from parsed arguments (`add_arguments`' options plus model_dir, device, dtype,
    allow_pickle)."""
    limits = ServeLimits(max_message_chars=args.max_message_chars, max_new_tokens=args.max_new_tokens,
                         max_running=args.max_running, max_waiting=args.max_waiting,
                         max_body_bytes=args.max_body_bytes)
    return serve(args.model_dir, host=args.host, port=args.port, device=args.device, dtype=args.dtype, limits=limits,
                 allow_pickle=args.allow_pickle, api_key=args.api_key, cors_origins=tuple(args.cors_origin),
                 name=args.served_model_name, threads=args.threads)


def serve(model_dir, host: str = "127.0.0.1", port: int = 8000, device: str | None = None, dtype: str = "float32",
          limits: ServeLimits | None = None, log_level: str = "info", allow_pickle: bool = False,
          api_key: str | None = None, cors_origins: tuple[str, ...] = (), name: str | None = None,
          threads: int | None = None) -> int:
    """Load the model folder once and serve it until Ctrl-C. `api_key` defaults to `$SMOLITE_API_KEY`. Like `smolite
    train`, it has glibc's malloc keep freed memory for the whole process (`memory.keep_freed_memory`)."""
    import torch
    import uvicorn

    from ..chat import load_chat_model
    from ..memory import keep_freed_memory
    from .app import create_app

    keep_freed_memory()  # each step's logits (2.3 MB at 8 seed-size rows) not page-faulted in afresh (README, Serve)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)
    model, tokenizer = load_chat_model(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)
    api_key = api_key if api_key is not None else (os.environ.get(API_KEY_VARIABLE) or None)
    name = name or Path(model_dir).resolve().name
    app = create_app(model, tokenizer, name=name, limits=limits, api_key=api_key, cors_origins=cors_origins)
    where = "only this machine can connect" if host in LOOPBACK else "reachable from the network"
    guarded = "an API key is required" if api_key else "no API key"
    print(f"Serving {model_dir} as {name!r} on http://{host}:{port}/ ({where}; {guarded}). "
          "OpenAI API at /v1. Ctrl-C stops.", flush=True)
    if host not in LOOPBACK and not api_key:
        print(f"warning: {host} is reachable from other machines and no API key is set: anyone who can reach port "
              f"{port} can use this model. Pass --api-key KEY or set {API_KEY_VARIABLE}.", file=sys.stderr, flush=True)
    # h11 refuses request heads over 16 KiB with a bare 400; allow 1 MiB so an oversized message reaches our check
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                h11_max_incomplete_event_size=1 << 20)
    return 0


__all__ = ["API_KEY_VARIABLE", "add_arguments", "main", "serve"]
