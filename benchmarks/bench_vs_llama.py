"""Smolite vs transformers' LlamaForCausalLM at the same size, measured in one run.

Both models: vocabulary 72000, hidden 256, 6 layers, 8 heads, intermediate 1024, tied embeddings, float32, sdpa.
Prints the median time of a training step (64 x 100 batch, half the positions masked out of the loss, Adam step
included) and greedy decoding tokens/s at batch 1 (60 new tokens, KV cache), and the ratios Smolite / Llama.
The two models are measured alternately, so that machine noise hits both alike.

    python benchmarks/bench_vs_llama.py [--repeats 5] [--batch 64] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smolite_hf import SmoliteConfig, SmoliteForCausalLM

SIZES = dict(vocab_size=72000, hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024)


def build_models():
    torch.manual_seed(0)
    smolite = SmoliteForCausalLM(SmoliteConfig(**SIZES, hidden_dropout=0.0))
    llama = LlamaForCausalLM(
        LlamaConfig(**SIZES, max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=4)
    )
    return {"smolite": smolite, "llama": llama}


def training_batch(batch: int, seq_len: int = 100):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, SIZES["vocab_size"], (batch, seq_len), generator=generator)
    labels = input_ids.clone()
    labels[:, : seq_len // 2] = -100  # half the positions are prompt or padding, as in chat data
    return input_ids, labels


def make_train_step(model, batch):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    input_ids, labels = batch
    model.train()

    def step():
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_decode(model, new_tokens: int):
    prompt = torch.tensor([[2, 17, 33, 8, 91, 3, 250, 1200, 4000, 3]])
    model.eval()

    def decode():
        with torch.no_grad():
            out = model.generate(
                prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )
        assert out.shape[1] == prompt.shape[1] + new_tokens

    return decode


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(tasks: dict, repeats: int) -> dict[str, list[float]]:
    for fn in tasks.values():  # warm-up
        fn()
    times = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, fn in tasks.items():
            times[name].append(timed(fn))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    models = build_models()
    batch = training_batch(args.batch)

    train = alternate({name: make_train_step(m, batch) for name, m in models.items()}, args.repeats)
    decode = alternate({name: make_decode(m, args.new_tokens) for name, m in models.items()}, args.repeats)

    train_s = {name: statistics.median(t) for name, t in train.items()}
    tokens_per_s = {name: args.new_tokens / statistics.median(t) for name, t in decode.items()}
    print(f"\ntraining step, batch {args.batch} x 100, half masked, Adam step included (median of {args.repeats})")
    for name in models:
        print(f"  {name:8s} {train_s[name]:7.3f} s/step  {args.batch * 50 / train_s[name]:8.0f} trained tokens/s")
    print(f"  speed-up Smolite vs Llama: {train_s['llama'] / train_s['smolite']:.2f}x")
    print(f"\ngreedy decoding, batch 1, {args.new_tokens} new tokens, KV cache (median of {args.repeats})")
    for name in models:
        print(f"  {name:8s} {tokens_per_s[name]:7.1f} tokens/s")
    print(f"  speed-up Smolite vs Llama: {tokens_per_s['smolite'] / tokens_per_s['llama']:.2f}x")


if __name__ == "__main__":
    main()
