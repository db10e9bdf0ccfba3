"""`smolite evaluate`: loss, masked accuracy and perplexities of a model folder on conversation files."""

from __future__ import annotations

import argparse
import json
import sys

from ..training import SmoliteTrainingArguments
from ._options import allow_pickle, data_files, model_folder


def register(commands) -> None:
    training_batch = SmoliteTrainingArguments.per_device_train_batch_size
    parser = commands.add_parser(
        "evaluate",
        parents=[model_folder(), data_files(default="the built-in test split"), allow_pickle()],
        help="report loss, masked accuracy and perplexities on conversation files",
    )
    parser.add_argument("--batch-size", type=int, help=f"examples per batch (default: the training batch size, {training_batch})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_model

    from ..data import builtin_data_path

    data = args.data or [str(builtin_data_path("test"))]
    metrics, report = evaluate_model(args.model_dir, data, batch_size=args.batch_size,
                                     skip_bad_lines=args.skip_bad_lines, allow_pickle=args.allow_pickle)
    for line in report.bad_lines:  # which lines --skip-bad-lines skipped (stderr: stdout may be --json)
        print(f"smolite evaluate: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps({"metrics": metrics, "data": {"files": data, **report.as_dict()}}, ensure_ascii=False))
    else:
        print(f"{args.model_dir} on {', '.join(data)}" + (" (the built-in test split)" if not args.data else "")
              + f": {report}")
        for name in ("loss", "masked_accuracy", "masked_perplexity", "perplexity", "targets"):
            value = metrics[name]
            print(f"  {name:20s} {value:.4f}" if isinstance(value, float) else f"  {name:20s} {value}")
    return 0
