"""`smolite serve`: a chat page and a streaming (SSE) chat API for a model folder."""

from __future__ import annotations

import argparse

from ._options import check_device, loaded_model


def register(commands) -> None:
    parser = commands.add_parser(
        "serve",
        parents=loaded_model(),
        help="serve a model folder: a chat page and a streaming (SSE) chat API on this machine",
        description="Load MODEL_DIR once and serve GET / (a chat page), GET /api/chat?message=... and POST /api/chat "
        "(Server-Sent Events: {\"char\": ...} pieces, then {\"done\": true} or {\"error\": ...}) and GET /health. "
        "Binds to 127.0.0.1 unless --host says otherwise.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-message-chars", type=int, default=1000, help="longest accepted message (default 1000)")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="cap on a reply's new tokens (default 100)")
    parser.add_argument("--max-waiting", type=int, default=32, help="queued requests before 503 (default 32)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    from ..serve import ServeLimits, serve

    limits = ServeLimits(max_message_chars=args.max_message_chars, max_new_tokens=args.max_new_tokens,
                         max_waiting=args.max_waiting)
    return serve(args.model_dir, host=args.host, port=args.port, device=args.device, dtype=args.dtype, limits=limits,
                 allow_pickle=args.allow_pickle)
