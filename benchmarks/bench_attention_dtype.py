"""Attention in bfloat16 (the default under bfloat16 autocast) against attention in float32, in one run.

    python benchmarks/bench_attention_dtype.py [--rounds 4] [--steps 2] [--batch 64] [--threads N]

The seed-size Smolite (vocabulary 72000, hidden 256, 6 layers, dropout 0.1) trains under bfloat16 autocast, as
`smolite train` does on CPUs that compute bfloat16 natively, on the 64 x 100 batch of `bench_vs_keras.py` (60 trained
positions per row), Adam with clipping. Both variants are attention functions registered through transformers'
`AttentionInterface` around its sdpa: one as autocast gives it (bfloat16), one with autocast off on float32
queries, keys and values. The two models take turns (ABBA); the script prints the median seconds per step of each,
their ratio, and which of the two the model's default (`modeling_smolite.attention_in_float32`) takes on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bench_vs_keras import SEED, cpu_description, training_batch
from smolite_hf import SmoliteConfig, SmoliteForCausalLM
from smolite_hf.modeling_smolite import attention_in_float32


def float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    with torch.autocast(query.device.type, enabled=False):
        output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                 **kwargs)
    return output.to(query.dtype), weights


def bfloat16_sdpa(module, query, key, value, attention_mask, **kwargs):
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per turn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; avx512_bf16 {cpu['avx512_bf16']}, AMX {cpu['amx']}; "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    AttentionInterface.register("sdpa_float32", float32_sdpa)
    AttentionInterface.register("sdpa_bfloat16", bfloat16_sdpa)
    probe = torch.zeros(1, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = "float32" if attention_in_float32(probe, "sdpa") else "bfloat16"
    print(f"the model's default attention under bfloat16 autocast on this CPU: {default}")
    ids, prompt = training_batch(args.batch)
    input_ids = torch.from_numpy(ids)
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    runs = {}
    for name, implementation in (("bfloat16 attention", "sdpa_bfloat16"), ("float32 attention", "sdpa_float32")):
        torch.manual_seed(0)
        config = SmoliteConfig(**SEED)
        config._attn_implementation = implementation
        model = SmoliteForCausalLM(config).train()
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8))

    def step(name: str) -> float:
        model, optimizer = runs[name]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for name in runs:  # warm-up
        step(name)
    times = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name in (list(runs) if round_ % 2 == 0 else list(runs)[::-1]):
            times[name] += [step(name) for _ in range(args.steps)]
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"  {name:20s} {seconds:.3f} s/step (median of {len(times[name])})")
    print(f"float32 attention / bfloat16 attention: {medians['float32 attention'] / medians['bfloat16 attention']:.3f}x "
          "the time per step")


if __name__ == "__main__":
    main()
