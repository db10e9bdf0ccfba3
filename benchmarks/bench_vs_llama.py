"""Smolite vs transformers' LlamaForCausalLM at the same size, measured in one run.

Both models: vocabulary 72000, hidden 256, 6 layers, 8 heads, intermediate 1024, tied embeddings, float32, sdpa,
each with its own defaults: Smolite trains with its dropout 0.1 (what `smolite train` uses), Llama has no dropout.
Prints the median time of a training step (64 x 100 batch, half the positions masked out of the loss, Adam step
included) in float32 and under bfloat16 autocast, and greedy decoding tokens/s at batch 1 (60 new tokens, KV
cache), and the ratios Smolite / Llama. The two models are measured alternately, so that machine noise hits both
alike. MFU is the work the step needs — the layers at every position, the output head at the 3200 positions that
have a target — per second, over the best matrix-multiply speed measured in the run for the dtype (float32: torch's
BLAS or its oneDNN path, whichever is faster on this CPU; measured before and after the training steps, the faster
kept); the CPU model and features are printed with it.

    python benchmarks/bench_vs_llama.py [--repeats 5] [--batch 64] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench_vs_keras import cpu_description  # the CPU model and features, printed alike by both benchmarks
from smolite_hf import SmoliteConfig, SmoliteForCausalLM

SIZES = dict(vocab_size=72000, hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024)


def build_models():
    torch.manual_seed(0)
    smolite = SmoliteForCausalLM(SmoliteConfig(**SIZES))  # hidden_dropout 0.1, the default users train with
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


def make_train_step(model, batch, bf16: bool = False, fuse: bool = True):
    """One training step; for Smolite, `fuse` is `config.fuse_linear_cross_entropy` (the fused head-plus-loss)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    input_ids, labels = batch
    model.train()

    def step():
        if hasattr(model.config, "fuse_linear_cross_entropy"):
            model.config.fuse_linear_cross_entropy = fuse  # the steps alternate: set it for each
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what TrainingArguments(bf16=True) does
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
                prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None
            )  # EOS ignored (as throughput benchmarks do), so that both always decode exactly `new_tokens`
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


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured FLOP/s of an n x n x n matrix multiply in `dtype` (the machine's practical peak)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def onednn_linear_peak(n: int = 2048, seconds: float = 2.0) -> float:
    """Measured FLOP/s of float32 n x n x n products through oneDNN (`torch.utils.mkldnn`, inference only): on CPUs
    where MKL takes a slow path it is the faster of torch's two float32 libraries."""
    import torch.utils.mkldnn  # not imported by `import torch`

    linear = torch.nn.Linear(n, n, bias=False).eval()
    with torch.no_grad():
        onednn = torch.utils.mkldnn.to_mkldnn(linear)
        x = torch.randn(n, n).to_mkldnn()
        onednn(x)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            onednn(x)
            count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def measure_peaks(bf16: bool, when: str) -> dict[str, float]:
    """The best measured 2048^3 matmul FLOP/s per dtype (float32: torch's BLAS or its oneDNN path), printed."""
    float32 = {"BLAS matmul": matmul_peak(torch.float32)}
    if torch.backends.mkldnn.is_available():
        float32["oneDNN linear"] = onednn_linear_peak()
    peak = {"float32": max(float32.values())}
    if bf16:
        peak["bfloat16"] = matmul_peak(torch.bfloat16)
    print(f"measured matmul peak (2048^3), {when}: float32 "
          + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in float32.items())
          + (f"; bfloat16 {peak['bfloat16'] / 1e9:.0f}" if bf16 else "") + " GFLOP/s")
    return peak


def step_flops(batch: int, seq_len: int = 100, head_positions: int | None = None) -> float:
    """Forward + backward FLOPs (3x forward) of one training step; the head at `head_positions` (default: all)."""
    d, layers, ff, vocab = SIZES["hidden_size"], SIZES["num_hidden_layers"], SIZES["intermediate_size"], SIZES["vocab_size"]
    tokens = batch * seq_len
    layer_matmul_params = 4 * d * d + 2 * d * 64 + 3 * d * ff  # attention, adapter, SwiGLU
    forward = tokens * layers * (2 * layer_matmul_params + 4 * seq_len * d)  # + attention scores and mixing
    forward += (tokens if head_positions is None else head_positions) * 2 * d * vocab
    return 3 * forward


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 autocast rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_description()
    features = ", ".join(name for name in ("avx512f", "avx512_bf16", "amx") if cpu[name]) or "no AVX-512"
    print(f"machine: {cpu['model']} ({cpu['cores']} cores; {features}), {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    peak = measure_peaks(bf16=not args.no_bf16, when="before")

    models = build_models()
    batch = training_batch(args.batch)
    tasks = {
        ("smolite", "float32"): make_train_step(models["smolite"], batch),
        ("smolite, full logits", "float32"): make_train_step(models["smolite"], batch, fuse=False),
        ("llama", "float32"): make_train_step(models["llama"], batch),
    }
    if not args.no_bf16:
        tasks[("smolite", "bfloat16")] = make_train_step(models["smolite"], batch, bf16=True)
        tasks[("llama", "bfloat16")] = make_train_step(models["llama"], batch, bf16=True)
    train = alternate(tasks, args.repeats)
    # measured again after the steps and the best of the two kept: on a shared machine a peak measured in a slow
    # minute made MFU exceed 100%
    peak = {dtype: max(value, later) for (dtype, value), later
            in zip(peak.items(), measure_peaks(bf16=not args.no_bf16, when="after the training steps").values())}
    train_s = {key: statistics.median(t) for key, t in train.items()}
    needed = step_flops(args.batch, head_positions=args.batch * 50)  # the head only where there is a target
    print(f"\ntraining step, batch {args.batch} x 100, half masked, Adam step included (median of {args.repeats}); "
          f"{needed / 1e12:.2f} TFLOP of work needed per step; MFU over the best peak measured, "
          + ", ".join(f"{dtype} {value / 1e9:.0f} GFLOP/s" for dtype, value in peak.items()))
    # MFU: the work needed / time / best measured peak of the dtype; "executed" counts what was computed (Llama and
    # Smolite with full logits project all 6400 positions, Smolite's default only the 3200 that have a target)
    print(f"  {'':24s} {'dtype':9s} {'s/step':>7s} {'trained tok/s':>14s} {'MFU':>6s} {'executed TFLOP':>15s} {'of peak':>8s}")
    for (name, dtype), seconds in train_s.items():
        executed = needed if name == "smolite" else step_flops(args.batch)
        print(f"  {name:24s} {dtype:9s} {seconds:7.3f} {args.batch * 50 / seconds:14.0f} "
              f"{needed / seconds / peak[dtype]:6.1%} {executed / 1e12:15.2f} {executed / seconds / peak[dtype]:8.1%}")
    for dtype in peak:
        print(f"  speed-up Smolite vs Llama, {dtype}: {train_s[('llama', dtype)] / train_s[('smolite', dtype)]:.2f}x")
    print(f"  (Smolite with full logits vs Llama, float32: "
          f"{train_s[('llama', 'float32')] / train_s[('smolite, full logits', 'float32')]:.2f}x)")
    fused_gain = train_s[("smolite, full logits", "float32")] / train_s[("smolite", "float32")]
    print(f"  fuse_linear_cross_entropy=True vs False (full logits), float32: {fused_gain:.2f}x "
          f"({'keep it the training default' if fused_gain > 1 else 'NOT faster here: reconsider the default'})")
    if not args.no_bf16:
        print(f"  Smolite bfloat16 vs Llama float32: {train_s[('llama', 'float32')] / train_s[('smolite', 'bfloat16')]:.2f}x")

    decode = alternate({name: make_decode(m, args.new_tokens) for name, m in models.items()}, args.repeats)
    tokens_per_s = {name: args.new_tokens / statistics.median(t) for name, t in decode.items()}
    print(f"\ngreedy decoding, batch 1, {args.new_tokens} new tokens, KV cache (median of {args.repeats})")
    for name in models:
        print(f"  {name:8s} {tokens_per_s[name]:7.1f} tokens/s")
    print(f"  speed-up Smolite vs Llama: {tokens_per_s['smolite'] / tokens_per_s['llama']:.2f}x")


if __name__ == "__main__":
    main()
