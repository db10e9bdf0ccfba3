"""Evaluating a Smolite folder on conversations: the function behind `smolite evaluate`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from transformers import PrinterCallback

from .data import load_conversation_dataset
from .folders import check_model_folder, load_model, load_tokenizer
from .training import SmoliteTrainingArguments, smolite_trainer


def evaluate_model(model_dir: str | os.PathLike, data, batch_size: int | None = None, skip_bad_lines: bool = False,
                   allow_pickle: bool = False, context_pairs: int | None = None):
    """`(metrics, BuildReport)`: the smoothed `loss`, `masked_accuracy`, `masked_perplexity`, `perplexity`, `targets`.

    `data`: conversation files or a `datasets.Dataset` (`smolite_hf.data.load_conversation_dataset`), encoded in the
    model's window, with the `context_pairs` the model was trained with (from its `training_report.json`; 0 when
    there is none) unless given. `batch_size` defaults to the training batch size (`SmoliteTrainingArguments`). A local
    `model_dir` is checked first (`smolite_hf.folders`); pickle weights only with `allow_pickle`."""
    if Path(model_dir).exists():
        check_model_folder(model_dir, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, allow_pickle=allow_pickle)
    if context_pairs is None:
        context_pairs = _trained_context_pairs(Path(model_dir))
    dataset, report = load_conversation_dataset(data, tokenizer, max_length=model.config.max_position_embeddings,
                                                skip_bad_lines=skip_bad_lines, allow_empty=True,
                                                context_pairs=context_pairs)
    if not len(dataset):
        raise ValueError(f"no example to evaluate in {data}: {report}")
    with tempfile.TemporaryDirectory() as scratch:
        args = SmoliteTrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, disable_tqdm=True)
        trainer = smolite_trainer(model, args, tokenizer, eval_dataset=dataset)
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


def _trained_context_pairs(model_dir: Path) -> int:
    try:
        return int(json.loads((model_dir / "training_report.json").read_text())["data"].get("context_pairs", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


__all__ = ["evaluate_model"]
