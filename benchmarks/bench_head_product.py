"""The output head's product in a decoding step, two ways, in turns: what `nn.Linear` runs (`hidden @ weight.T`) and
the large operand first (`weight @ hidden.T`), which `smolite serve`'s worker takes from
`HEAD_TRANSPOSED_MIN_ROWS` rows of a float32 head of at least `HEAD_TRANSPOSED_MIN_BYTES`
(`smolite_hf.serving.worker.head_logits`).

    python benchmarks/bench_head_product.py [--rows 1 2 4 8 16 32] [--rounds 5] [--threads 1]

For each head (the seed size's, vocabulary 72000 x hidden 256, and the quickstart's, 1500 x 128) and each number of
rows, the median milliseconds of each product over `--rounds` rounds taken in turns, their ratio, and which one the
worker's rule takes. `smolite serve` is measured with one torch thread (`benchmarks/load_serve.py --threads 1`), so
that is the default here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_vs_keras import cpu_description
from smolite_hf.serving import worker

HEADS = {"seed size": (72000, 256), "quickstart": (1500, 128)}


def milliseconds(function, budget: float = 0.2) -> float:
    """The mean time of `function` over about `budget` seconds, after one call."""
    function()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        function()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; AVX-512 {cpu['avx512f']}, AMX {cpu['amx']}; "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, (vocab, hidden_size) in HEADS.items():
            head = torch.nn.Linear(hidden_size, vocab, bias=False)
            weight = head.weight
            print(f"\n{name} head, {vocab} x {hidden_size} float32 ({weight.nbytes / 2**20:.1f} MiB); ms per product")
            print(f"  {'rows':>4s} {'hidden @ weight.T':>18s} {'weight @ hidden.T':>18s} {'ratio':>6s}  worker takes")
            for rows in args.rows:
                hidden = torch.randn(rows, hidden_size, generator=generator)
                linear, transposed = [], []
                for _ in range(args.rounds):
                    linear.append(milliseconds(lambda: head(hidden)))
                    transposed.append(milliseconds(lambda: torch.mm(weight, hidden.t()).t().contiguous()))
                linear_ms, transposed_ms = statistics.median(linear), statistics.median(transposed)
                takes_transposed = (rows >= worker.HEAD_TRANSPOSED_MIN_ROWS
                                    and weight.nbytes >= worker.HEAD_TRANSPOSED_MIN_BYTES)
                print(f"  {rows:4d} {linear_ms:18.3f} {transposed_ms:18.3f} {linear_ms / transposed_ms:5.2f}x  "
                      f"{'weight @ hidden.T' if takes_transposed else 'hidden @ weight.T (nn.Linear)'}")
    print("\nratio: hidden @ weight.T time over weight @ hidden.T time (above 1: the large operand first is faster)")


if __name__ == "__main__":
    main()
