"""`smolite train`: the options are the fields of `smolite_hf.training`'s argument dataclasses, read by
`HfArgumentParser` (as transformers' `run_clm.py` reads its own), so `--help` shows their defaults and help texts."""

from __future__ import annotations

import argparse
import sys

from transformers import HfArgumentParser

from ..training import TRAIN_ARGUMENTS
from ._options import require


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless there is none or the help already says it."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def register(commands) -> None:
    parser = commands.add_parser(
        "train",
        parents=[HfArgumentParser(TRAIN_ARGUMENTS, add_help=False)],
        formatter_class=_DefaultsFormatter,
        usage="%(prog)s --output-dir DIR [--data FILE ...] [--size {small,mini,tiny} | --config FILE | "
        "--from-pretrained DIR] [options]",
        help="train or fine-tune Smolite with the Trainer (the built-in Korean conversations by default)",
        description="Train Smolite from scratch (a --size preset or a --config file; a tokenizer is trained on the "
        "data unless --tokenizer is given) or fine-tune it (--from-pretrained) on conversation files. The seed's "
        "recipe is the default: Adam lr 1e-4, betas 0.9/0.95, eps 1e-8, grad-norm clip 1.0, batch 64, one epoch, "
        "label smoothing 0.1 in the model's loss. Every transformers.TrainingArguments option is accepted too.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training import own_process_group

    with own_process_group():  # parsing the arguments starts torchrun's process group; it ends with the command
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from ..tokenization_smolite import VocabularySizeError
    from ..training import keep_freed_memory, train_with_arguments

    model_args, data_args, training_args = HfArgumentParser(TRAIN_ARGUMENTS).parse_dict(vars(args), allow_extra_keys=True)
    if model_args.lora:
        require("peft", "peft", "--lora")
    if training_args.use_cpu:  # no page faults for the large tensors each step (bench_step_settings.py)
        keep_freed_memory()
    try:
        result = train_with_arguments(model_args, data_args, training_args)
    except VocabularySizeError as err:
        raise ValueError(err.describe("--vocab-size")) from None
    except KeyboardInterrupt:
        print(f"smolite train: interrupted; to continue from the latest checkpoint in {training_args.output_dir}, run "
              "the same command with --resume.", file=sys.stderr)
        return 130
    if not result.trained:
        return 0
    train_report = result.data_report["train"]
    print(f"Trained on {train_report['used']} examples in {result.train_seconds:.0f} s -> {result.output_dir}")
    if result.metrics:
        print(f"Evaluated on {result.data_report['eval_split']}:")
    for name, value in result.metrics.items():
        if name.startswith("eval_") and isinstance(value, float):
            print(f"  {name[5:]:20s} {value:.4f}")
    return 0
