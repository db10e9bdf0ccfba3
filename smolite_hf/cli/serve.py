"""`smolite serve`: a chat page, the original SSE chat API and an OpenAI-compatible API for a model folder."""

from __future__ import annotations

import argparse

from ._options import check_device, loaded_model


def register(commands) -> None:
    from ..serving import add_arguments

    parser = commands.add_parser(
        "serve",
        parents=loaded_model(),
        help="serve a model folder: a chat page, a streaming chat API and the OpenAI chat API on this machine",
        description="Load MODEL_DIR once and serve POST /v1/chat/completions and GET /v1/models (OpenAI's API), "
        "GET / (a chat page), GET/POST /api/chat (the original Server-Sent Events protocol), GET /health and "
        "GET /metrics; concurrent requests are decoded in one batch. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    from ..serving import main

    return main(args)
