"""The seed's metrics through the Trainer hooks reproduce the fixture's values."""

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from smolite_hf.metrics import compute_metrics, make_preprocess_logits_for_metrics


def fixture_metrics(logits, labels):
    stats = make_preprocess_logits_for_metrics(0.1)(torch.from_numpy(logits), torch.from_numpy(labels))
    assert stats.shape == (*labels.shape, 3)  # three numbers per position, not the vocabulary
    return compute_metrics(EvalPrediction(predictions=stats.numpy(), label_ids=labels))


def test_metrics_on_the_fixture_batch(expected):
    metrics = fixture_metrics(expected["logits"], expected["labels_hf"])
    assert metrics["targets"] == int(expected["num_target_tokens"]) == 136
    assert metrics["masked_accuracy"] == pytest.approx(float(expected["masked_accuracy"]), abs=1e-6)
    assert metrics["masked_perplexity"] == pytest.approx(float(expected["masked_perplexity"]), rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(float(expected["perplexity"]), rel=1e-4)


def test_metrics_through_trainer_evaluate(converted_model, expected, tmp_path):
    rows = [{"input_ids": torch.from_numpy(expected["input_ids"][i]).long(), "labels": torch.from_numpy(expected["labels_hf"][i])} for i in range(3)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model=converted_model, args=args, eval_dataset=rows, compute_metrics=compute_metrics,
                      preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(0.1))
    metrics = trainer.evaluate()  # two batches: the Trainer concatenates and pads the [B, T, 3] statistics
    assert metrics["eval_masked_accuracy"] == pytest.approx(float(expected["masked_accuracy"]), abs=1e-6)
    assert metrics["eval_masked_perplexity"] == pytest.approx(float(expected["masked_perplexity"]), rel=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(float(expected["perplexity"]), rel=1e-4)
    assert metrics["eval_masked_perplexity"] == pytest.approx(np.exp(float(expected["loss"])), rel=1e-4)


def test_padding_across_batches_is_ignored(expected):
    labels = expected["labels_hf"]
    padded = np.full((3, 120), -100, dtype=labels.dtype)
    padded[:, :100] = labels
    stats = make_preprocess_logits_for_metrics(0.1)(torch.from_numpy(expected["logits"]), torch.from_numpy(labels)).numpy()
    padded_stats = np.full((3, 120, 3), -100.0, dtype=np.float32)  # as the Trainer pads predictions
    padded_stats[:, :100] = stats
    assert compute_metrics(EvalPrediction(padded_stats, padded)) == compute_metrics(EvalPrediction(stats, labels))
