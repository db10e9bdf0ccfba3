"""`smolite chat`: chat with a model folder in the terminal, replies streamed."""

from __future__ import annotations

import argparse

from ..generation import GREEDY, PRESETS
from ._options import check_device, loaded_model, seed


def register(commands) -> None:
    parser = commands.add_parser(
        "chat",
        parents=[*loaded_model(), seed("make sampling reproducible")],
        help="chat with a model folder in the terminal (streamed replies)",
        description="Chat with a Smolite folder; replies stream as they are generated. The folder's "
        "generation_config.json (the seed's chat decoding: temperature 0.5, top-p 0.9, repetition penalty 1.1) is the "
        "default. /reset starts over; type 'quit' or press Ctrl-C to leave. A LoRA folder (smolite train --lora) loads "
        "its base model with the adapter merged in (needs peft).",
    )
    parser.add_argument("--prompt", metavar="TEXT", help="answer this one message and exit")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the original's decoding variants")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--greedy", action="store_true", help="always the most likely token")
    parser.add_argument("--max-new-tokens", type=int)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError('--prompt is empty: give the message to answer (--prompt "안녕하세요"), or leave --prompt out '
                         "to chat interactively.")
    check_device(args.device)
    from ..chat import chat

    overrides = dict(PRESETS[args.preset]) if args.preset else {}
    if args.greedy:
        overrides.update(GREEDY)
    for name in ("temperature", "top_p", "max_new_tokens"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return chat(args.model_dir, prompt=args.prompt, seed=args.seed, device=args.device, dtype=args.dtype,
                allow_pickle=args.allow_pickle, **overrides)
