"""The benchmark scripts run and print what the README quotes (smallest settings; no timing is asserted).

The README's performance and reliability figures come from these scripts; a script that no longer runs, or stops
printing a ratio, would leave those figures without a command that reproduces them.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(name: str, *args: str, timeout: int = 300) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


def ratio(pattern: str, output: str) -> float:
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in:\n{output}"
    value = float(match.group(1))
    assert value > 0
    return value


def test_bench_vs_llama_prints_training_and_decoding_ratios():
    out = run_benchmark("bench_vs_llama.py", "--repeats", "1", "--batch", "2", "--new-tokens", "3", "--no-bf16")
    assert re.search(r"machine: .+ \(\d+ cores; .+\)", out), out  # the CPU and its features come with the figures
    for when in ("before", "after the training steps"):  # the peak is measured twice and the faster kept
        ratio(rf"measured matmul peak \(2048\^3\), {when}: float32 BLAS matmul (\d+)", out)
    ratio(r"MFU over the best peak measured, float32 (\d+) GFLOP/s", out)
    if torch.backends.mkldnn.is_available():  # float32 MFU is against the faster of torch's two float32 libraries
        ratio(r"float32 BLAS matmul \d+, oneDNN linear (\d+)", out)
    assert len(re.findall(r"float32 +[\d.]+ +\d+ +[\d.]+% +[\d.]+ +[\d.]+%", out)) == 3, out  # s/step … MFU
    ratio(r"speed-up Smolite vs Llama, float32: ([\d.]+)x", out)
    ratio(r"Smolite with full logits vs Llama, float32: ([\d.]+)x", out)
    ratio(r"smolite +([\d.]+) tokens/s", out)
    ratio(r"speed-up Smolite vs Llama: ([\d.]+)x", out)  # the decoding ratio (training lines name a dtype)


def test_bench_attention_dtype_times_both_attention_dtypes():
    out = run_benchmark("bench_attention_dtype.py", "--rounds", "2", "--steps", "1", "--batch", "2")
    assert re.search(r"default attention under bfloat16 autocast on this CPU: (float32|bfloat16)", out), out
    ratio(r"bfloat16 attention +([\d.]+) s/step", out)
    ratio(r"float32 attention +([\d.]+) s/step", out)
    ratio(r"float32 attention / bfloat16 attention: ([\d.]+)x", out)


def test_bench_fused_loss_checks_both_softmax_blockings_agree_and_times_them():
    # the script itself asserts that both give the same loss and gradients (to float32 rounding)
    out = run_benchmark("bench_fused_loss.py", "--rounds", "2", "--rows", "40")
    assert re.search(r"softmax block: \d+ MiB = \d+ rows; chunk: \d+ rows; 40 rows x vocabulary 72000", out), out
    for dtype in ("float32", "bfloat16 autocast"):
        ratio(rf"{dtype}: whole chunk / rows in blocks: ([\d.]+)x", out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="keep_freed_memory() is a glibc setting")
def test_bench_step_settings_times_the_fused_adam_and_kept_memory_alone_and_together():
    out = run_benchmark("bench_step_settings.py", "--rounds", "1", "--steps", "1", "--batch", "2")
    assert re.search(r"CPU: .+, \d+ cores; avx512_bf16 (True|False), AMX (True|False)", out), out
    for name in ("neither", "fused Adam", "kept memory", r"both \(smolite train\)"):
        ratio(rf"{name} +[\d.]+ s/step +optimizer +[\d.]+ ms +([\d.]+)x", out)


def test_bench_head_product_times_the_three_products_and_names_the_workers_choice():
    out = run_benchmark("bench_head_product.py", "--rows", "1", "8", "--rounds", "1")
    assert re.search(r"CPU: .+, \d+ cores; AVX-512 (True|False), AMX (True|False).*oneDNN available True", out), out
    rows = re.findall(r"^ +(\d+) +[\d.]+ +[\d.]+ +[\d.]+ +([\d.]+)x  (.+)$", out, flags=re.M)
    assert [(r, choice) for r, _, choice in rows] == [  # the seed size's head, then the quickstart's
        ("1", "oneDNN reordered (onednn)"), ("8", "oneDNN reordered (onednn)"),
        ("1", "hidden @ weight.T (module)"), ("8", "hidden @ weight.T (module)")], out
    assert all(float(value) > 0 for _, value, _ in rows)


def test_bench_decoding_agrees_with_the_original_loop_and_prints_the_bound():
    # the script itself asserts that cached generate() and the original loop choose the same tokens
    out = run_benchmark("bench_decoding.py", "--repeats", "1", "--new-tokens", "4", "--batches", "1")
    ratio(r"smolite / llama: +([\d.]+)x", out)
    ratio(r"smolite / original loop \(PyTorch re-implementation\): ([\d.]+)x", out)
    assert 0 < ratio(r"smolite reaches (\d+)% of it", out) <= 100


def test_bench_conversion_converts_a_seed_size_file_identically():
    out = run_benchmark("bench_conversion.py")
    assert re.search(r"converted a seed-size Keras weights file \(100 MB, 24\.9M parameters\) in [\d.]+ s", out), out
    assert "weights identical to the source model: True" in out
    command, startup = map(float, re.search(r"DIR`: ([\d.]+) s, of which the start-up .* is ([\d.]+) s", out).groups())
    assert 0 < startup < command


def test_bench_eval_memory_measures_each_size_in_its_own_process():
    out = run_benchmark("bench_eval_memory.py", "--sizes", "4", "8")
    assert re.search(r"4 examples \(\d+ targets\): peak RSS \d+ MB", out), out
    assert re.search(r"8 examples \(\d+ targets\): peak RSS \d+ MB", out), out
    ratio(r"peak RSS 8 / 4 examples: ([\d.]+)", out)


def test_load_serve_reports_no_errors_and_every_malformed_request_refused(converted_dir):
    out = run_benchmark("load_serve.py", str(converted_dir), "--clients", "2", "--seconds", "2", "--rounds", "2",
                        "--max-new-tokens", "3", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["requests"] > 0 and report["errors"] == 0
    assert [run["rounds"] for run in report["runs"]] == [2, 2]  # both modes, two turns each
    (speedup,) = report["speedups"]
    assert len(speedup["rounds"]) == 2 and min(speedup["rounds"]) <= speedup["speedup"] <= max(speedup["rounds"])
    assert len(speedup["steady_rounds"]) == 2
    assert min(speedup["steady_rounds"]) <= speedup["steady_speedup"] <= max(speedup["steady_rounds"])
    for run in report["runs"]:  # the server's count over the window: tokens were generated in it
        assert run["steady_tokens_per_s"] > 0, run
        assert len(run["rss_mib_after_rounds"]) == 2 and run["rss_mib_after_rounds"][-1] == run["rss_mib_end"], run
    assert report["malformed_requests"] >= 10
    assert report["malformed_answered_4xx_naming_the_field"] == report["malformed_requests"]
    assert report["server_alive_after"] is True
    assert report["ttft_p50_s"] <= report["e2e_p50_s"]


def test_bench_serve_worker_prints_the_ratios_of_the_worker_alone(converted_dir):
    out = run_benchmark("bench_serve_worker.py", str(converted_dir), "--rows", "2", "--new-tokens", "4",
                        "--seconds", "1", "--rounds", "2", "--threads", "1")
    assert re.search(r"CPU: .+ \(\d+ cores; .+\); 1 torch threads", out), out
    ratio(r"2 requests together [\d.]+ tokens/s, one alone [\d.]+ tokens/s \(medians of 2\): ([\d.]+)x", out)
    measured = ratio(r"2 clients back to back, batched [\d., ]+ tokens/s, one-at-a-time [\d., ]+: ([\d.]+)x", out)
    rounds = [float(r.rstrip("x")) for r in re.search(r"median of the rounds: ([\d.x, ]+)\)", out).group(1).split(", ")]
    assert len(rounds) == 2 and min(rounds) <= measured <= max(rounds)
    ratio(r"2 clients back to back, prompts in a pass of their own [\d., ]+ tokens/s: batched / prompts apart "
          r"([\d.]+)x \(median of the rounds: [\d.x, ]+\)", out)
