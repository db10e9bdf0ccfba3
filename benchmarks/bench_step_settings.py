"""What `smolite train`'s two process settings do to the seed-size training step: the fused Adam and kept memory.

    python benchmarks/bench_step_settings.py [--rounds 4] [--steps 3] [--batch 64] [--threads N] [--bf16 true|false]

`smolite train` optimizes with torch's fused AdamW (`adamw_torch_fused`, one kernel per step) and, on the CPU, has
glibc's malloc keep freed memory (`training.keep_freed_memory`: no fresh mapping, page-faulted in again, for every
tensor above 32 MB). Four variants of the seed-size step of `bench_vs_keras.py` (vocabulary 72000, batch 64 x 100, 60
trained positions per row, dropout 0.1, clipping to 1.0) — neither setting, each alone, both (what `smolite train`
does) — each run in a fresh process (the malloc setting is process-wide), taking turns (ABBA) for `--rounds`. The
script prints the CPU, each variant's median seconds per step and optimizer step, and each one's speed against the
variant with neither.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_vs_keras import SEED, cpu_description, training_batch

VARIANTS = {  # name: (fused Adam, keep freed memory)
    "neither": (False, False),
    "fused Adam": (True, False),
    "kept memory": (False, True),
    "both (smolite train)": (True, True),
}


def worker(args) -> dict:
    import torch

    from smolite_hf import SmoliteConfig, SmoliteForCausalLM
    from smolite_hf.training import keep_freed_memory

    kept = keep_freed_memory() if args.keep_memory else False
    torch.set_num_threads(args.threads)
    ids, prompt = training_batch(args.batch)
    input_ids = torch.from_numpy(ids)
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    torch.manual_seed(0)
    model = SmoliteForCausalLM(SmoliteConfig(**SEED)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                  fused=args.fused)

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before_update = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        return end - start, end - before_update

    step()  # warm-up
    return {"steps": [step() for _ in range(args.steps)], "kept": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="turns per variant, each a fresh process")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per turn, after one warm-up")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--bf16", choices=["true", "false"],
                        help="bfloat16 autocast (default: what smolite train picks on this CPU)")
    parser.add_argument("--worker", nargs=2, choices=["0", "1"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bf16 is None:
        from smolite_hf.training import cpu_computes_bfloat16

        args.bf16 = "true" if cpu_computes_bfloat16() else "false"
    if args.worker:
        args.fused, args.keep_memory, args.bf16 = args.worker[0] == "1", args.worker[1] == "1", args.bf16 == "true"
        print(json.dumps(worker(args)))
        return

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; avx512_bf16 {cpu['avx512_bf16']}, AMX {cpu['amx']}; "
          f"{args.threads} torch threads; {'bfloat16 autocast' if args.bf16 == 'true' else 'float32'}")
    steps = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name in list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]:
            fused, keep = VARIANTS[name]
            command = [sys.executable, __file__, "--worker", str(int(fused)), str(int(keep)), "--steps",
                       str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads), "--bf16", args.bf16]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if done.returncode != 0:
                raise SystemExit(f"the {name} worker failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if keep and not result["kept"]:
                raise SystemExit("keep_freed_memory() did not take here (not Linux with glibc): nothing to compare")
            steps[name] += result["steps"]
    medians = {name: (statistics.median(s for s, _ in values), statistics.median(u for _, u in values))
               for name, values in steps.items()}
    base = medians["neither"][0]
    print(f"seed size, batch {args.batch} x {SEED['seq_len']}, {args.rounds} rounds x {args.steps} steps, median:")
    for name, (seconds, update) in medians.items():
        print(f"  {name:22s} {seconds:6.3f} s/step  optimizer {update * 1000:6.1f} ms  {base / seconds:5.2f}x")


if __name__ == "__main__":
    main()
