"""The output head's product in a decoding step, three ways, in turns: what `nn.Linear` runs (MKL's
`hidden @ weight.T`), the large operand first (`weight @ hidden.T`), and oneDNN with the weight reordered once for it
(`torch.ops.mkldnn._linear_pointwise`) — the three paths of `smolite serve`'s `smolite_hf.serving.worker.OutputHead`.

    python benchmarks/bench_head_product.py [--rows 1 2 4 8 16 32] [--rounds 5] [--threads 1]

For each head (the seed size's, vocabulary 72000 x hidden 256, and the quickstart's, 1500 x 128) and each number of
rows, the median milliseconds of each product over `--rounds` rounds taken in turns, the ratio of `nn.Linear`'s time
to the path the worker takes, and which path that is (`OutputHead.path`). `smolite serve` is measured with one torch
thread (`benchmarks/load_serve.py --threads 1`), so that is the default here. Each product is checked against
`nn.Linear`'s to float32 rounding before it is timed.
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
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"oneDNN available {torch.backends.mkldnn.is_available()}")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, (vocab, hidden_size) in HEADS.items():
            head = torch.nn.Linear(hidden_size, vocab, bias=False)
            weight = head.weight
            reordered = torch.ops.mkldnn._reorder_linear_weight(weight, worker.HEAD_PACK_ROWS)
            chosen = worker.OutputHead(head)
            products = {
                "hidden @ weight.T": head,
                "weight @ hidden.T": lambda hidden: torch.mm(weight, hidden.t()).t().contiguous(),
                "oneDNN reordered": lambda hidden: torch.ops.mkldnn._linear_pointwise(hidden, reordered, None, "none",
                                                                                       [], ""),
            }
            print(f"\n{name} head, {vocab} x {hidden_size} float32 ({weight.nbytes / 2**20:.1f} MiB); ms per product")
            print(f"  {'rows':>4s} " + " ".join(f"{label:>18s}" for label in products) + f" {'ratio':>6s}  worker takes")
            for rows in args.rows:
                hidden = torch.randn(rows, hidden_size, generator=generator)
                for product in products.values():
                    torch.testing.assert_close(product(hidden), head(hidden))
                times = {label: [] for label in products}
                for _ in range(args.rounds):
                    for label, product in products.items():
                        times[label].append(milliseconds(lambda: product(hidden)))
                median = {label: statistics.median(values) for label, values in times.items()}
                path = chosen.path(hidden)
                taken = {"module": "hidden @ weight.T", "transposed": "weight @ hidden.T",
                         "onednn": "oneDNN reordered"}[path]
                print(f"  {rows:4d} " + " ".join(f"{median[label]:18.3f}" for label in products)
                      + f" {median['hidden @ weight.T'] / median[taken]:5.2f}x  {taken} ({path})")
    print("\nratio: nn.Linear's time over the time of the product the worker takes (above 1: the worker's is faster)")


if __name__ == "__main__":
    main()
