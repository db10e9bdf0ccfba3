"""The generation worker of `smolite serve` alone, in this process: how much batching gains before HTTP.

    python benchmarks/bench_serve_worker.py runs/quickstart --seed-size --rows 8 --seconds 6 --rounds 3 --threads 1

For each model — the folders given, and with `--seed-size` the seed-size Smolite with random weights that
`load_serve.py` builds — it measures `serving.worker.BatchedGenerator` without a server:

- *together*: `--rows` requests with one prompt, submitted at once, each decoding exactly `--new-tokens` tokens (the
  minimum length set to the prompt's and theirs), against one such request alone, taking turns `--rounds` times:
  generated tokens/s from the first submission to the last reply (each includes its one prefill), and the ratio of
  the medians;
- *back to back*: `--rows` threads each submitting requests one after the other (`load_serve.py`'s messages, its 30
  tokens, the folder's sampling settings, prompts and settings prepared beforehand) for `--seconds`, to a worker
  decoding up to 16 together, to one doing the same with every prompt in a pass of its own (`merge_prompts=False`,
  not in the running rows' decoding pass) and to one decoding one at a time (`max_running` 1), taking turns for
  `--rounds` runs (ABC, CBA, ... order); generated tokens/s, and each ratio as the median of the rounds' ratios.

`load_serve.py` measures the same two settings of the worker behind `smolite serve`; the ratio here is what
batching gains before the server's own work per request and per token, which grows with the tokens a second (README,
Serve: Measured).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench_vs_keras import cpu_description
from load_serve import MESSAGES, seed_size_folder
from smolite_hf.chat import load_chat_model
from smolite_hf.memory import keep_freed_memory
from smolite_hf.serving.worker import BatchedGenerator


def together(worker: BatchedGenerator, rows: int, new_tokens: int) -> float:
    """Generated tokens/s of `rows` equal requests submitted at once, each exactly `new_tokens` long."""
    prompt, config = worker.prepare([{"role": "user", "content": MESSAGES[1]}], max_new_tokens=new_tokens)
    # <end> forbidden until the last token, through the seed's own minimum-length processor (min_new_tokens would add
    # MinNewTokensLengthLogitsProcessor, which the worker calls row by row)
    config.min_length = len(prompt) + new_tokens
    started = time.perf_counter()
    jobs = [worker.submit(prompt, copy.deepcopy(config)) for _ in range(rows)]
    tokens = sum(job.result(timeout=600).completion_tokens for job in jobs)
    return tokens / (time.perf_counter() - started)


def back_to_back(worker: BatchedGenerator, prepared: list, clients: int, seconds: float) -> float:
    """Generated tokens/s of `clients` threads submitting prepared requests one after the other for `seconds`."""
    stop_at = time.monotonic() + seconds
    counts: list[int] = []

    def client(seed: int) -> None:
        chooser = random.Random(seed)
        while time.monotonic() < stop_at:
            prompt, config = chooser.choice(prepared)
            counts.append(worker.submit(prompt, copy.deepcopy(config)).result(timeout=600).completion_tokens)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="trained model folders")
    parser.add_argument("--seed-size", action="store_true",
                        help="also a seed-size model with random weights (the first folder's tokenizer)")
    parser.add_argument("--rows", type=int, default=8, help="requests decoded together; clients back to back")
    parser.add_argument("--new-tokens", type=int, default=60, help="tokens of each request decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="max_new_tokens of the back-to-back requests")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each back-to-back run")
    parser.add_argument("--rounds", type=int, default=3, help="back-to-back runs of each mode, taking turns")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as smolite serve does
    cpu = cpu_description()
    features = ", ".join(name for name in ("avx512f", "avx512_bf16", "amx") if cpu[name]) or "no AVX-512"
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores; {features}); {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")

    with tempfile.TemporaryDirectory(prefix="smolite-worker-") as scratch:
        folders = [(Path(folder).name, folder) for folder in args.model_dirs]
        if args.seed_size:
            folders.append(("seed size, random weights", str(seed_size_folder(args.model_dirs[0], Path(scratch)))))
        for label, folder in folders:
            model, tokenizer = load_chat_model(folder)
            workers = {"batched": BatchedGenerator(model, tokenizer, max_running=16, max_waiting=64).start(),
                       "prompts apart": BatchedGenerator(model, tokenizer, max_running=16, max_waiting=64,
                                                         merge_prompts=False).start(),
                       "one-at-a-time": BatchedGenerator(model, tokenizer, max_running=1, max_waiting=64).start()}
            together(workers["batched"], args.rows, args.new_tokens)  # warm up
            alone, batch = [], []
            for _ in range(args.rounds):  # taking turns
                alone.append(together(workers["batched"], 1, args.new_tokens))
                batch.append(together(workers["batched"], args.rows, args.new_tokens))
            alone_, batch_ = statistics.median(alone), statistics.median(batch)
            print(f"{label}: {args.rows} requests together {batch_:.1f} tokens/s, one alone {alone_:.1f} tokens/s "
                  f"(medians of {args.rounds}): {batch_ / alone_:.2f}x", flush=True)
            try:
                prepared = [workers["batched"].prepare([{"role": "user", "content": message}],
                                                       max_new_tokens=args.max_new_tokens) for message in MESSAGES]
                for worker in workers.values():
                    back_to_back(worker, prepared, args.rows, min(1.0, args.seconds))  # warm up
                measured: dict[str, list[float]] = {mode: [] for mode in workers}
                for round_ in range(args.rounds):
                    for mode in (list(workers) if round_ % 2 == 0 else list(workers)[::-1]):
                        measured[mode].append(back_to_back(workers[mode], prepared, args.rows, args.seconds))
            finally:
                for worker in workers.values():
                    worker.close()
            def rounds(mode: str) -> str:
                return ", ".join(f"{x:.1f}" for x in measured[mode])

            def ratio(mode: str, reference: str) -> str:
                ratios = [m / r for m, r in zip(measured[mode], measured[reference])]
                return (f"{statistics.median(ratios):.2f}x (median of the rounds: "
                        f"{', '.join(f'{r:.2f}x' for r in ratios)})")

            print(f"{label}: {args.rows} clients back to back, batched {rounds('batched')} tokens/s, one-at-a-time "
                  f"{rounds('one-at-a-time')}: {ratio('batched', 'one-at-a-time')}", flush=True)
            print(f"{label}: {args.rows} clients back to back, prompts in a pass of their own "
                  f"{rounds('prompts apart')} tokens/s: batched / prompts apart {ratio('batched', 'prompts apart')}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
