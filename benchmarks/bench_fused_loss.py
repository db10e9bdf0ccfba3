"""The fused head loss with its softmax a few rows at a time (the default on the CPU) against a whole chunk at once.

    python benchmarks/bench_fused_loss.py [--rounds 4] [--rows 3840] [--threads N]

`loss_smolite.linear_smoothed_cross_entropy` at the seed size's training shapes (3840 target positions — 64 rows of
60 trained positions — hidden 256, vocabulary 72000), forward and backward, in float32 and under bfloat16 autocast:
once with `SOFTMAX_BLOCK_BYTES` as shipped (about 4 MiB of float32 softmax rows at a time) and once with one block
per 256 MB chunk (how it ran before). The two take turns (ABBA) for `--rounds`; the script checks that both give the
same loss and gradients to float32 rounding (on the AMD kind they are bit for bit the same; one CI run on the Intel
kind saw them differ by 1.7e-7 in the hidden states' gradient), and prints the median seconds of each, their ratio,
and the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_vs_keras import cpu_description
from smolite_hf import loss_smolite

VOCAB, HIDDEN = 72000, 256
CHUNK_BYTES = 1 << 28  # linear_smoothed_cross_entropy's default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=3840, help="target positions (64 x 60 at the seed size)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; avx512_bf16 {cpu['avx512_bf16']}, AMX {cpu['amx']}; "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    torch.manual_seed(0)
    hidden = (torch.randn(args.rows, HIDDEN) * 0.5).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN) * 0.05).requires_grad_()
    targets = torch.randint(0, VOCAB, (args.rows,))
    shipped = loss_smolite.SOFTMAX_BLOCK_BYTES
    variants = {"rows in blocks (default)": shipped, "whole chunk at once": CHUNK_BYTES}

    def run(block_bytes: int, bf16: bool):
        loss_smolite.SOFTMAX_BLOCK_BYTES = block_bytes
        try:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_smolite.linear_smoothed_cross_entropy(hidden, weight, targets, 0.1, CHUNK_BYTES)
            grads = torch.autograd.grad(loss, (hidden, weight))
            return time.perf_counter() - start, loss.detach(), grads
        finally:
            loss_smolite.SOFTMAX_BLOCK_BYTES = shipped

    rows_per_block = max(1, shipped // (4 * VOCAB))
    print(f"softmax block: {shipped / 2**20:.0f} MiB = {rows_per_block} rows; chunk: "
          f"{CHUNK_BYTES // (4 * VOCAB)} rows; {args.rows} rows x vocabulary {VOCAB}")
    for dtype, bf16 in (("float32", False), ("bfloat16 autocast", True)):
        results = {name: run(block_bytes, bf16) for name, block_bytes in variants.items()}  # warm-up, and the check
        (_, loss_a, grads_a), (_, loss_b, grads_b) = results.values()
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-2)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        times = {name: [] for name in variants}
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(run(variants[name], bf16)[0])
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, median in medians.items():
            print(f"  {dtype:17}  {name:25} {median:.3f} s (median of {args.rounds})")
        blocked, whole = medians.values()
        print(f"  {dtype}: whole chunk / rows in blocks: {whole / blocked:.2f}x")


if __name__ == "__main__":
    main()
