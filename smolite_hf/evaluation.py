"""Evaluating a Smolite folder on conversation files: the function behind `smolite evaluate`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainingArguments

from .data import build_examples, read_conversation_files
from .folders import check_model_folder, load_model, load_tokenizer
from .training import examples_to_dataset, smolite_trainer


def evaluate_model(model_dir: str | os.PathLike, data, batch_size: int = 64, skip_bad_lines: bool = False,
                   allow_pickle: bool = False):
    """`(metrics, BuildReport)`: the smoothed `loss`, `masked_accuracy`, `masked_perplexity`, `perplexity`, `targets`.

    A local `model_dir` is checked first (`smolite_hf.folders`); pickle weights only with `allow_pickle`."""
    if Path(model_dir).exists():
        check_model_folder(model_dir, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, allow_pickle=allow_pickle)
    conversations, _ = read_conversation_files(data, skip_bad_lines=skip_bad_lines)
    examples, report = build_examples(conversations, tokenizer, max_length=model.config.max_position_embeddings)
    if not examples:
        raise ValueError(f"no example to evaluate in {data}: {report}")
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = smolite_trainer(model, args, tokenizer, eval_dataset=examples_to_dataset(examples))
        trainer.remove_callback(PrinterCallback)  # stdout is the caller's (`smolite evaluate --json`)
        raw = trainer.evaluate()
    metrics = {
        "loss": raw["eval_loss"],
        "masked_accuracy": raw["eval_masked_accuracy"],
        "masked_perplexity": raw["eval_masked_perplexity"],
        "perplexity": raw["eval_perplexity"],
        "targets": raw["eval_targets"],
    }
    return metrics, report


__all__ = ["evaluate_model"]
