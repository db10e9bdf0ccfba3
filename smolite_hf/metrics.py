"""The seed's evaluation metrics as `Trainer` hooks, computed over reply tokens only and in constant memory.

```python
trainer = Trainer(
    model, args, eval_dataset=eval_set, data_collator=collator,
    preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(model.config.label_smoothing),
    compute_metrics=compute_metrics,
)
```

`preprocess_logits_for_metrics` reduces each batch's `[B, T, V]` logits to three numbers per position — whether the
argmax is the target, the target's negative log-likelihood, and the label-smoothed loss — aligned with the labels
for the causal shift (entry `t` scores the prediction of `labels[t]` from position `t - 1`). The Trainer then keeps
`[N, T, 3]` instead of `[N, T, V]`, so evaluation memory does not grow with the vocabulary.

`compute_metrics` reports, as token-level means over every target of the evaluation set:

- `masked_accuracy`: share of targets predicted by the argmax;
- `masked_perplexity`: exp of the **smoothed** loss (the seed's definition);
- `perplexity`: exp of the plain negative log-likelihood.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100


def make_preprocess_logits_for_metrics(label_smoothing: float):
    """A `preprocess_logits_for_metrics` for a model trained with label smoothing `label_smoothing`."""

    def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, tuple):
            logits = logits[0]
        targets = labels[:, 1:]  # (B, T-1): what positions 0..T-2 predict
        valid = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        stats = torch.zeros(*labels.shape, 3, dtype=torch.float32, device=logits.device)
        for row in range(logits.shape[0]):  # one row at a time: a float32 log-softmax of (T, V), not (B, T, V)
            log_probs = logits[row, :-1].float().log_softmax(-1)  # (T-1, V)
            nll = -log_probs.gather(-1, safe_targets[row, :, None]).squeeze(-1)
            smoothed = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
            correct = (log_probs.argmax(-1) == targets[row]).float()
            stats[row, 1:] = torch.stack([correct, nll, smoothed], -1) * valid[row, :, None]
        return stats

    return preprocess_logits_for_metrics


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Masked accuracy, masked (smoothed) perplexity and perplexity from `make_preprocess_logits_for_metrics`."""
    stats, labels = eval_prediction.predictions, eval_prediction.label_ids
    stats = np.asarray(stats[0] if isinstance(stats, tuple) else stats)
    labels = np.asarray(labels)
    mask = labels != IGNORE_INDEX
    mask[:, 0] = False  # the first label has no prediction before it
    count = int(mask.sum())
    if count == 0:
        return {"masked_accuracy": float("nan"), "masked_perplexity": float("nan"), "perplexity": float("nan"), "targets": 0}
    correct, nll, smoothed = (stats[..., k][mask].astype(np.float64) for k in range(3))
    return {
        "masked_accuracy": float(correct.mean()),
        "masked_perplexity": math.exp(smoothed.mean()),
        "perplexity": math.exp(nll.mean()),
        "targets": count,
    }


__all__ = ["compute_metrics", "make_preprocess_logits_for_metrics"]
