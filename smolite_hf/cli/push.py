"""`smolite push`: upload a model folder to the Hugging Face Hub with a generated model card."""

from __future__ import annotations

import argparse

from ._options import model_folder


def register(commands) -> None:
    parser = commands.add_parser(
        "push",
        parents=[model_folder()],
        help="upload a model folder to the Hugging Face Hub with a generated model card",
        description="Upload MODEL_DIR (model, tokenizer, source files for trust_remote_code, and a generated model "
        "card) to a Hub repository in one commit. The local folder is only read.",
    )
    parser.add_argument("--repo-id", required=True, metavar="NAME", help="user/name or org/name")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="a Hub token with write access (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--license", default="apache-2.0", help="the license in the model card (default apache-2.0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import push_model

    repo_id = push_model(args.model_dir, args.repo_id, private=args.private, token=args.token, license=args.license)
    print(f"Uploaded {args.model_dir} to https://huggingface.co/{repo_id}")
    return 0
