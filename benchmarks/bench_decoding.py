"""Greedy decoding speed: Smolite's generate() vs transformers' Llama vs the original's loop, in one run.

Seed-size models (vocabulary 72000, hidden 256, 6 layers, 8 heads, intermediate 1024, tied, float32), 60 new tokens
from 10-token prompts, at batch 1 and batch 16:

- `smolite`: `SmoliteForCausalLM.generate(do_sample=False)` with the KV cache;
- `llama`: `LlamaForCausalLM.generate` of the same sizes, with the KV cache;
- `original loop (PyTorch)`: the original's decoding loop re-implemented in PyTorch on the same Smolite weights, not
  the Keras loop itself: every step runs the whole model on the last 100 ids right-padded to 100 (no cache), takes
  the logits at the last real position, lowers <end> by 5 and <pad> by 10, and appends the argmax.

Also prints the bandwidth bound at batch 1: the read bandwidth of a matrix-vector product over as many bytes as the
weights (measured here, in the decoding access pattern) / bytes of weights read per token.

    python benchmarks/bench_decoding.py [--repeats 3] [--new-tokens 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smolite_hf import SmoliteConfig, SmoliteForCausalLM

SIZES = dict(vocab_size=72000, hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024)
PAD, END = 0, 4


def original_loop(model, prompts: torch.Tensor, new_tokens: int, window: int = 100) -> torch.Tensor:
    sequences = prompts
    with torch.no_grad():
        for _ in range(new_tokens):
            context = sequences[:, -window:]
            length = context.shape[1]
            padded = torch.nn.functional.pad(context, (0, window - length), value=PAD)
            logits = model(padded, use_cache=False).logits[:, length - 1].clone()
            logits[:, END] -= 5.0
            logits[:, PAD] -= 10.0
            sequences = torch.cat([sequences, logits.argmax(-1, keepdim=True)], dim=1)
    return sequences


def generate(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                              max_new_tokens=new_tokens, pad_token_id=PAD, eos_token_id=None)  # EOS ignored


def measured_bandwidth_gb_s(nbytes: int) -> float:
    """Read bandwidth in the decoding access pattern: one float32 matrix-vector product over `nbytes` of matrix.

    Over a matrix the size of the model's weights this is as fast as those weights can be read where they live (on
    CPUs whose last-level cache holds the whole model, that cache); over a much larger one it is main memory."""
    matrix = torch.randn(nbytes // 4 // 256, 256)
    vector = torch.randn(256)
    torch.mv(matrix, vector)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.mv(matrix, vector)
        times.append(time.perf_counter() - start)
    return matrix.numel() * 4 / min(times) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=60)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    torch.manual_seed(0)
    smolite = SmoliteForCausalLM(SmoliteConfig(**SIZES, hidden_dropout=0.0)).eval()
    llama = LlamaForCausalLM(LlamaConfig(**SIZES, max_position_embeddings=128, tie_word_embeddings=True,
                                         pad_token_id=PAD, bos_token_id=2, eos_token_id=END)).eval()
    print(f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {args.new_tokens} new tokens, greedy")
    results = {}
    for batch in args.batches:
        prompts = torch.randint(5, 72000, (batch, 10), generator=torch.Generator().manual_seed(batch))
        runs = {
            "smolite": lambda: generate(smolite, prompts, args.new_tokens),
            "llama": lambda: generate(llama, prompts, args.new_tokens),
            "original loop (PyTorch)": lambda: original_loop(smolite, prompts, args.new_tokens),
        }
        for run in runs.values():  # warm-up (and the greedy paths must agree)
            run()
        original = runs["original loop (PyTorch)"]
        assert torch.equal(runs["smolite"](), original()), "cached generate() and the original loop disagree"
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        results[batch] = {name: batch * args.new_tokens / statistics.median(t) for name, t in times.items()}
        print(f"\nbatch {batch} (median of {args.repeats})")
        for name, rate in results[batch].items():
            print(f"  {name:24s} {rate:8.1f} tokens/s")
        print(f"  smolite / llama: {results[batch]['smolite'] / results[batch]['llama']:.2f}x")
        versus_original = results[batch]["smolite"] / results[batch]["original loop (PyTorch)"]
        print(f"  smolite / original loop (PyTorch re-implementation): {versus_original:.2f}x")
    if 1 in results and 16 in results:
        print(f"\nsmolite batch 16 / batch 1 tokens/s: {results[16]['smolite'] / results[1]['smolite']:.2f}x")
    if 1 in results:
        weight_bytes = sum(p.numel() * p.element_size() for p in smolite.parameters())
        bandwidth = measured_bandwidth_gb_s(weight_bytes)
        memory = measured_bandwidth_gb_s(2 * 2**30)
        bound = bandwidth * 1e9 / weight_bytes
        print(f"bandwidth bound at batch 1: {weight_bytes / 1e6:.0f} MB of weights read per token; a matrix-vector "
              f"product over that many bytes reads {bandwidth:.1f} GB/s (over 2 GiB, i.e. from main memory: "
              f"{memory:.1f} GB/s) -> {bound:.0f} tokens/s; smolite reaches {results[1]['smolite'] / bound:.0%} of it")


if __name__ == "__main__":
    main()
