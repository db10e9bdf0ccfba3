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


# The float32 softmax rows handled at once on the CPU: about 4 MiB, 14 rows at vocabulary 72000 (2 threads, seed-size
# chunks: 87 ms a chunk from 4 to 16 rows, 97 at 32, 217 for the whole 932-row chunk at once, on the Intel kind).
SOFTMAX_BLOCK_BYTES = 1 << 22


class _LinearSmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross entropy of `hidden @ weight.T`, chunk by chunk, with the gradients made in forward.

    Per target the loss is `logsumexp(z) - (1 - eps) z_y - eps mean_v(z)` and its gradient with respect to the logits
    `softmax(z) - eps / V - (1 - eps) onehot(y)`. Only the softmax needs the `(rows, V)` logits: per chunk of rows they
    are made once (in `compute_dtype`), one fused `log_softmax` (float32) and one `exp` give the log-sum-exp
    `z_y - log p_y` and the softmax, which the `exp` writes back over the logits and is multiplied straight into the gradients
    (`p @ W`, `p.T @ h`). On the CPU the softmax goes through the chunk `block_rows` rows at a time, a few MiB that
    stay in the core's cache across its passes (2.5x faster than the whole chunk at once, which streams 256 MB
    through memory four times); the products take the whole chunk. One logits buffer serves every chunk (chunks of
    even sizes): a fresh 110-270 MB tensor per chunk would be page-faulted in again each time. Everything else is linear in the logits and is
    computed from `hidden` and `weight` without them: `z_y = <h, W_y>`, `mean_v(z) = <h, mean_v(W)>`, and the
    gradient's constant and one-hot parts, `-(eps / V) sum_v(W) - (1 - eps) W_y` for `hidden` and a row-wise update
    for `weight`. So no `(N, V)` tensor outlives its
    chunk and there is no log-softmax backward. The weight's gradient is accumulated in float32 whatever
    `compute_dtype` is.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing: float, chunk_rows: int, block_rows: int,
                compute_dtype):
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunks = -(-rows // chunk_rows)
        chunk_rows = -(-rows // chunks)  # as many chunks, of even sizes
        eps = label_smoothing
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h_all, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        h32, w32 = hidden.float(), weight.float()
        target_rows = w32[targets]  # (rows, d)
        linear_part = (1.0 - eps) * (h32 * target_rows).sum(-1) + eps * (h32 @ w32.mean(0))  # (1-eps) z_y + eps mean z
        total = -linear_part.sum()
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        logits = torch.empty(min(rows, chunk_rows), vocab, dtype=compute_dtype, device=hidden.device)
        for start in range(0, rows, chunk_rows):
            h = h_all[start : start + chunk_rows]
            y = targets[start : start + chunk_rows, None]
            p = torch.matmul(h, w.t(), out=logits[: len(h)])  # (c, V): the logits, then in place their softmax
            for row in range(0, len(p), block_rows):
                z, y_block = p[row : row + block_rows], y[row : row + block_rows]
                log_probs = torch.log_softmax(z.float(), dim=-1)  # float32
                total += (z.gather(1, y_block).float() - log_probs.gather(1, y_block)).sum()  # z_y - log p_y
                torch.exp(log_probs, out=z)  # the softmax, into the buffer (compute_dtype) the two products read
            if need_hidden:
                grad_hidden[start : start + chunk_rows] = torch.matmul(p, w)
            if need_weight:
                if compute_dtype != torch.float32:
                    grad_weight.add_(torch.matmul(p.t(), h))
                else:
                    grad_weight.addmm_(p.t(), h)
        if need_hidden:  # the constant and one-hot parts of the logits' gradient
            grad_hidden.sub_(target_rows, alpha=1.0 - eps).sub_(w32.sum(0), alpha=eps / vocab)
        if need_weight:
            grad_weight.index_add_(0, targets, h32, alpha=-(1.0 - eps)).sub_(h32.sum(0), alpha=eps / vocab)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = (grad_hidden * grad_output).to(hidden_dtype) if grad_hidden is not None else None
        grad_weight = (grad_weight * grad_output).to(weight_dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_smoothed_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
    chunk_bytes: int = 1 << 28,
) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T, targets, label_smoothing=..., reduction="sum")` without holding the
    `(N, V)` logits: chunks of at most `chunk_bytes` of float32 logits, gradients computed in the forward pass.
    Under autocast the two matrix products per chunk run in the autocast dtype, the softmax in float32, and the
    weight's gradient is accumulated in float32 for the float32 weight itself."""
    device_type = hidden.device.type
    compute_dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    chunk_rows = max(1, chunk_bytes // (4 * weight.shape[0]))
    block_rows = max(1, SOFTMAX_BLOCK_BYTES // (4 * weight.shape[0])) if device_type == "cpu" else chunk_rows
    with torch.autocast(device_type, enabled=False):
        return _LinearSmoothedCrossEntropy.apply(hidden, weight, targets, label_smoothing, chunk_rows, block_rows,
                                                 compute_dtype)


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
