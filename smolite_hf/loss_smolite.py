"""Smolite's training loss: label-smoothed causal-LM cross entropy, plain or fused with the output head.

`SmoliteForCausalLM` sets `self.loss_function = smolite_causal_lm_loss` (transformers' `PreTrainedModel.loss_function`
hook; the class name still gives `loss_type="ForCausalLM"`, which the Trainer reads to count `num_items_in_batch`
over shifted labels). The model calls it in one of two ways, chosen by `config.fuse_linear_cross_entropy`:

- with `logits`: `label_smoothed_causal_lm_loss`, the loss of full logits (evaluation, or fusion off);
- with `hidden_states` and `lm_head`: `fused_linear_causal_lm_loss`, which projects only the positions that have a
  target and, for a plain `nn.Linear` head, runs `linear_smoothed_cross_entropy`: the head and the loss chunk by chunk
  with the gradients formed in the forward pass (Liger Kernel's fused linear cross entropy, in plain PyTorch).

Per target the loss is `(1 - eps) * NLL + eps * mean_v(-log p_v)`, the original's smoothed loss, averaged over every
target of the batch, or divided by `num_items_in_batch` when the Trainer passes it (counted over all
gradient-accumulation micro-batches, so accumulation gives the update of one large batch). A batch without any
target gives 0, as the original (which divides by `count + 1e-8`).

This file travels with saved models (remote code): it imports only torch.
"""

import torch
import torch.nn.functional as F
from torch import nn


def shifted_targets(labels, shift_labels=None, ignore_index: int = -100) -> torch.Tensor:
    """The target of every position, flattened: `labels[t + 1]` (the last position has none), or `shift_labels[t]`."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return shift_labels.reshape(-1)


def _token_mean(summed: torch.Tensor, num_items_in_batch, keep: torch.Tensor) -> torch.Tensor:
    if num_items_in_batch is None:
        num_items_in_batch = keep.sum().clamp(min=1)  # a batch without targets has loss 0, as in the original
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(summed.device)
    return summed / num_items_in_batch


def _summed_smoothed_cross_entropy(logits, targets, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)


def label_smoothed_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int,
    label_smoothing: float = 0.0,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """The smoothed loss of `logits` `(B, T, V)`: logits at `t` against `labels[t + 1]` (or `shift_labels[t]`).

    Only the positions that have a target go through the log-softmax.
    """
    targets = shifted_targets(labels, shift_labels, ignore_index).to(logits.device)
    keep = targets != ignore_index
    selected = logits.reshape(-1, vocab_size)[keep]  # (N_targets, V)
    summed = _summed_smoothed_cross_entropy(selected, targets[keep], label_smoothing)
    return _token_mean(summed, num_items_in_batch, keep)


class _LinearSmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross entropy of `hidden @ weight.T`, chunk by chunk, with the gradients made in forward.

    For each chunk of rows the logits are computed in float32, the loss is `logsumexp(z) - (1 - eps) z_y - eps
    mean(z)` and its gradient `softmax(z) - (1 - eps) onehot(y) - eps / V` is formed in place and multiplied back
    into the gradients of `hidden` and `weight`; so no `(N, V)` tensor outlives its chunk and there is no separate
    log-softmax backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing: float, chunk_rows: int):
        rows, vocab = hidden.shape[0], weight.shape[0]
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk_rows):
            h, y = hidden[start : start + chunk_rows], targets[start : start + chunk_rows, None]
            logits = torch.matmul(h, weight.t()).float()  # (c, V)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            loss = lse - (1.0 - label_smoothing) * logits.gather(1, y) - label_smoothing * logits.mean(-1, keepdim=True)
            total += loss.sum()
            if need_hidden or need_weight:
                grad = logits.sub_(lse).exp_().sub_(label_smoothing / vocab)  # softmax - eps / V, in place
                grad.scatter_add_(1, y, torch.full_like(y, -(1.0 - label_smoothing), dtype=grad.dtype))
                grad = grad.to(h.dtype)
                if need_hidden:
                    torch.matmul(grad, weight, out=grad_hidden[start : start + chunk_rows])
                if need_weight:
                    if h.dtype == torch.float32:
                        grad_weight.addmm_(grad.t(), h)
                    else:
                        grad_weight += torch.matmul(grad.t(), h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype) if grad_hidden is not None else None
        grad_weight = grad_weight * grad_output if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None


def linear_smoothed_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
    chunk_bytes: int = 1 << 28,
) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T, targets, label_smoothing=..., reduction="sum")` without holding the
    `(N, V)` logits: chunks of `chunk_bytes` of float32 logits, gradients computed in the forward pass. Under
    autocast the two matrix products run in the autocast dtype, the softmax in float32."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    chunk_rows = max(1, chunk_bytes // (4 * weight.shape[0]))
    with torch.autocast(device_type, enabled=False):
        return _LinearSmoothedCrossEntropy.apply(hidden, weight, targets, label_smoothing, chunk_rows)


def fused_linear_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor | None,
    label_smoothing: float = 0.0,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """The smoothed loss of `lm_head(hidden_states)` `(B, T, d)`, projecting only the positions that have a target.

    A plain bias-free `nn.Linear` head goes through `linear_smoothed_cross_entropy`; any other head (PEFT-wrapped,
    quantised) runs its own forward on the selected rows, followed by the plain loss. Either way the loss equals
    `label_smoothed_causal_lm_loss(lm_head(hidden_states), ...)`.
    """
    targets = shifted_targets(labels, shift_labels, ignore_index).to(hidden_states.device)
    keep = targets != ignore_index
    selected = hidden_states.reshape(-1, hidden_states.shape[-1])[keep]  # (N_targets, d)
    if type(lm_head) is nn.Linear and lm_head.bias is None:
        summed = linear_smoothed_cross_entropy(selected, lm_head.weight, targets[keep], label_smoothing)
    else:
        summed = _summed_smoothed_cross_entropy(lm_head(selected), targets[keep], label_smoothing)
    return _token_mean(summed, num_items_in_batch, keep)


def smolite_causal_lm_loss(
    logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    vocab_size: int | None = None,
    *,
    hidden_states: torch.Tensor | None = None,
    lm_head: nn.Module | None = None,
    **kwargs,
) -> torch.Tensor:
    """`SmoliteForCausalLM.loss_function`: the loss of `logits`, or, given `hidden_states` and `lm_head` instead,
    the fused head-plus-loss. Other keywords (`label_smoothing`, `num_items_in_batch`, `shift_labels`,
    `ignore_index`) go to `label_smoothed_causal_lm_loss` / `fused_linear_causal_lm_loss`."""
    if logits is not None:
        return label_smoothed_causal_lm_loss(logits, labels, vocab_size, **kwargs)
    if hidden_states is None or lm_head is None:
        raise ValueError("smolite_causal_lm_loss needs logits, or hidden_states and lm_head for the fused loss.")
    return fused_linear_causal_lm_loss(hidden_states, lm_head, labels, **kwargs)


__all__ = [
    "fused_linear_causal_lm_loss",
    "label_smoothed_causal_lm_loss",
    "linear_smoothed_cross_entropy",
    "shifted_targets",
    "smolite_causal_lm_loss",
]
