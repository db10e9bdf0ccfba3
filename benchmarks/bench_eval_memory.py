"""Evaluation memory is flat in the number of examples: peak RSS of `Trainer.evaluate` on 64 vs 1024 examples.

Small-size Smolite (the released Small: vocabulary 72000), examples that fill its 100-position window with the prompt
half masked, evaluated through the
Trainer with `smolite_hf.metrics` (which keeps [N, T, 3] statistics instead of [N, T, 72000] logits: at 1024
examples the logits alone would be 29 GB). Each size runs in a fresh process; the ratio is printed.

    python benchmarks/bench_eval_memory.py [--sizes 64 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile


def measure(n_examples: int) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from smolite_hf import SmoliteConfig, SmoliteForCausalLM
    from smolite_hf.metrics import compute_metrics, make_preprocess_logits_for_metrics

    torch.manual_seed(0)
    config = SmoliteConfig()  # the released Small
    model = SmoliteForCausalLM(config).eval()
    window = config.max_position_embeddings
    generator = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(n_examples):
        ids = torch.randint(5, config.vocab_size, (window,), generator=generator)
        labels = ids.clone()
        labels[: window // 2] = -100
        examples.append({"input_ids": ids, "labels": labels})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=64, use_cpu=True, report_to="none", disable_tqdm=True)
        trainer = Trainer(model=model, args=args, eval_dataset=examples, compute_metrics=compute_metrics,
                          preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(config.label_smoothing))
        metrics = trainer.evaluate()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"examples": n_examples, "peak_rss_mb": peak / 1024, "rss_before_eval_mb": before / 1024, "targets": metrics["eval_targets"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    results = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{r['examples']:5d} examples ({r['targets']} targets): peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(model and data loaded: {r['rss_before_eval_mb']:.0f} MB)")
    first, last = results[0], results[-1]
    print(f"peak RSS {last['examples']} / {first['examples']} examples: {last['peak_rss_mb'] / first['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
