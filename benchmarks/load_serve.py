"""Load test of `smolite serve`: the batched server against one-at-a-time, at 1, 8 and 32 concurrent clients.

    python benchmarks/load_serve.py runs/quickstart --seed-size --clients 1 8 32 --seconds 8 --rounds 3

For each model — the folders given, and with `--seed-size` a seed-size Smolite with random weights (vocabulary 72000,
hidden 256, 6 layers; the tokenizer of the first folder) — it starts `smolite serve` in two modes, each as its own
process (so its memory is measured alone): `batched` (`--max-running 16`, the default) and `one-at-a-time`
(`--max-running 1`, the same server decoding one request at a time). For each client count the two modes take turns
for `--rounds` runs each of `--seconds` (ABBA order, so that a machine slowing down or speeding up weighs on both):
every client streams `POST /v1/chat/completions` requests (the folder's sampling settings, `max_tokens`
`--max-new-tokens`, usage included) back to back. Reported per mode and client count, over its rounds: aggregate
generated tokens/s (the usage counts over the runs' wall time, and the server's own count over the part of each run
in which every client has a request in flight: "while all clients wait", which leaves out the end of a run, when the
clients have stopped sending and the last replies finish in an emptying batch), time to first content chunk and
end-to-end latency (p50/p99), errors (a non-200 answer, an error chunk, or a stream without `[DONE]`), and the
server's resident memory at the start, the end and after each round (freed memory stays with a server, so its
resident size climbs to its peak over the first rounds and stays there; a leak goes on climbing); and the ratios
batched / one-at-a-time of both, each the median of the rounds' ratios (each round's two runs are next to each
other in time). Then, once per server, malformed requests (oversized query, invalid UTF-8, bad numbers, unknown
fields, bad JSON) must each get a 4xx naming the field, and the server must still answer afterwards.

`--json` prints one JSON object as the last line (`runs`: one entry per model, mode and client count; top-level
totals for the smoke test in `tests/test_benchmarks.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench_vs_keras import cpu_description  # the CPU model and features, printed alike by every benchmark

MESSAGES = ["안녕하세요", "주말에 뭐 하면 좋을까?", "오늘 날씨 어때?", "배고파", "요즘 뭐 읽어?", "잘 자!", "영화 추천해 줘", "피곤하다"]
MODES = {"batched": 16, "one-at-a-time": 1}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 3)


def seed_size_folder(tokenizer_dir: str, where: Path) -> Path:
    """A seed-size Smolite with random weights and `tokenizer_dir`'s tokenizer. Its output head is its own (not tied:
    the same work per step) with the rows of the tokenizer's ordinary pieces scaled up, so that replies decode to
    text; the other rows of the 72000 still cost their share of every step."""
    import torch

    from smolite_hf import SmoliteConfig, SmoliteForCausalLM
    from smolite_hf.folders import load_tokenizer
    from smolite_hf.generation import smolite_generation_config

    tokenizer = load_tokenizer(tokenizer_dir)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("pad", "<pad>"), ("unk", "<unk>"), ("bos", "<start>"), ("sep", "<sep>"), ("eos", "<end>"))}
    torch.manual_seed(0)
    config = SmoliteConfig(vocab_size=72000, pad_token_id=ids["pad"], unk_token_id=ids["unk"], bos_token_id=ids["bos"],
                           sep_token_id=ids["sep"], eos_token_id=ids["eos"], tie_word_embeddings=False)
    model = SmoliteForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[max(ids.values()) + 1 : len(tokenizer)] *= 20
    model.generation_config = smolite_generation_config(config)
    folder = where / "smolite-seed-random"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Server:
    """`smolite serve FOLDER` in its own process on a free loopback port."""

    def __init__(self, folder: str, max_running: int, threads: int | None):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = Path(folder).resolve().name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smolite_hf", "serve", folder, "--port", str(self.port), "--device", "cpu",
             "--max-running", str(max_running), "--max-waiting", "64",
             *(["--threads", str(threads)] if threads else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "SMOLITE_API_KEY"})
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"smolite serve {folder} did not start")
            time.sleep(0.2)

    def rss(self) -> float:
        return rss_mib(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def one_request(client: httpx.AsyncClient, server: Server, message: str, max_tokens: int,
                      temperature: float | None) -> dict:
    started = time.perf_counter()
    first = None
    tokens, error, done = 0, None, False
    body = {"model": server.name, "messages": [{"role": "user", "content": message}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    if temperature is not None:
        body["temperature"] = temperature
    try:
        async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]["message"]
                elif chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - started
    except httpx.HTTPError as exception:
        return {"error": f"{type(exception).__name__}: {exception}"}
    total = time.perf_counter() - started
    if error is None and not done:
        error = "stream ended without [DONE]"
    return {"ttft": first if first is not None else total, "e2e": total, "tokens": tokens, "error": error}


async def generated_tokens(client: httpx.AsyncClient, server: Server) -> float:
    """The server's `smolite_generated_tokens_total` (`GET /metrics`)."""
    response = await client.get(f"{server.url}/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        if family.name == "smolite_generated_tokens":
            return family.samples[0].value
    raise SystemExit(f"{server.url}/metrics has no smolite_generated_tokens_total")


async def load(server: Server, clients: int, seconds: float, max_tokens: int, temperature: float | None = None) -> dict:
    """`clients` clients sending requests back to back for `seconds`; each then waits for its last reply. Tokens/s
    over the whole run, and over the window in which every client has a request in flight (`steady_tokens_per_s`:
    the server's token count from the start to `seconds`; the wait for the last replies, in which fewer and fewer
    requests are left to share the batch, is outside it)."""
    records: list[dict] = []
    samples = [server.rss()]
    metrics = httpx.AsyncClient(timeout=30)
    window: dict[str, float] = {}

    async def client_loop(seed: int) -> None:
        chooser = random.Random(seed)
        async with httpx.AsyncClient(timeout=300) as client:
            while time.monotonic() < stop_at:
                records.append(await one_request(client, server, chooser.choice(MESSAGES), max_tokens, temperature))

    async def sample_memory() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            samples.append(server.rss())

    async def end_of_window() -> None:
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        window["seconds"] = time.monotonic() - started
        window["tokens"] = await generated_tokens(metrics, server) - before

    before = await generated_tokens(metrics, server)
    started = time.monotonic()
    stop_at = started + seconds
    sampler = asyncio.create_task(sample_memory())
    ender = asyncio.create_task(end_of_window())
    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    await ender
    sampler.cancel()
    await metrics.aclose()
    samples.append(server.rss())
    good = [r for r in records if r["error"] is None]
    errors = [r["error"] for r in records if r["error"] is not None]
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": len(records), "errors": len(errors),
        "error_examples": errors[:3], "tokens": sum(r["tokens"] for r in good),
        "tokens_per_s": round(sum(r["tokens"] for r in good) / elapsed, 1),
        "steady_seconds": window["seconds"], "steady_tokens": window["tokens"],
        "steady_tokens_per_s": round(window["tokens"] / window["seconds"], 1),
        "ttft_p50_s": percentile([r["ttft"] for r in good], 0.5), "ttft_p99_s": percentile([r["ttft"] for r in good], 0.99),
        "e2e_p50_s": percentile([r["e2e"] for r in good], 0.5), "e2e_p99_s": percentile([r["e2e"] for r in good], 0.99),
        "rss_mib_start": round(samples[0], 1), "rss_mib_end": round(samples[-1], 1), "rss_mib_max": round(max(samples), 1),
        "_ttft": [r["ttft"] for r in good], "_e2e": [r["e2e"] for r in good],
    }


def combine(parts: list[dict]) -> dict:
    """One mode's runs at one client count (its rounds) as one: sums, and percentiles over all their requests."""
    seconds, tokens = sum(p["seconds"] for p in parts), sum(p["tokens"] for p in parts)
    ttft, e2e = [t for p in parts for t in p["_ttft"]], [t for p in parts for t in p["_e2e"]]
    return {
        "clients": parts[0]["clients"], "rounds": len(parts), "seconds": round(seconds, 1),
        "requests": sum(p["requests"] for p in parts), "errors": sum(p["errors"] for p in parts),
        "error_examples": [e for p in parts for e in p["error_examples"]][:3], "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "steady_tokens_per_s": round(sum(p["steady_tokens"] for p in parts)
                                     / sum(p["steady_seconds"] for p in parts), 1),
        "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
        "e2e_p50_s": percentile(e2e, 0.5), "e2e_p99_s": percentile(e2e, 0.99),
        "rss_mib_start": parts[0]["rss_mib_start"], "rss_mib_end": parts[-1]["rss_mib_end"],
        "rss_mib_max": max(p["rss_mib_max"] for p in parts), "rss_mib_after_rounds": [p["rss_mib_end"] for p in parts],
        "_ttft": ttft, "_e2e": e2e,
    }


MALFORMED = [
    ("GET", {"message": "가" * 7_000}, None, "message"),  # an oversized query (63 KB encoded; httpx caps URLs at 64 KB)
    ("GET", "message=%ff%fe%fd", None, "message"),  # invalid UTF-8
    ("GET", {"message": "hi", "max_new_tokens": "-5"}, None, "max_new_tokens"),
    ("GET", {"message": "hi", "max_new_tokens": "99999999999999999999"}, None, "max_new_tokens"),
    ("GET", {"message": "hi", "max_new_tokens": "1e3"}, None, "max_new_tokens"),
    ("GET", {"message": "hi", "evil": "1"}, None, "evil"),
    ("GET", {}, None, "message"),
    ("POST", None, b"\xff\xfe{", "body"),
    ("POST", None, b'{"messages": [{"role": "user", "content": "hi"}]', "body"),
    ("POST", None, json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": -1}).encode(), "max_new_tokens"),
    ("POST", None, json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 10**12}).encode(), "max_new_tokens"),
    ("POST", None, json.dumps({"messages": [{"role": "user", "content": "hi"}], "unknown": 1}).encode(), "unknown"),
    ("POST", None, json.dumps({"messages": [{"role": "user", "content": ["x"]}]}).encode(), "messages[0].content"),
    ("POST", None, json.dumps({"messages": [{"role": "user", "content": "hi"}] * 1000}).encode(), "messages"),
    ("POST", None, json.dumps([1, 2, 3]).encode(), "body"),
    ("V1", None, json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), "n"),
    ("V1", None, json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}).encode(), "max_tokens"),
    ("V1", None, b'{"model": "m", "messages": [', "body"),
]


def malformed(url: str) -> list[dict]:
    results = []
    with httpx.Client(timeout=30) as client:
        for method, params, body, field in MALFORMED:
            headers = {"Content-Type": "application/json"}
            if method == "GET":
                target = f"{url}/api/chat?{params}" if isinstance(params, str) else f"{url}/api/chat"
                response = client.get(target, params=None if isinstance(params, str) else params)
            else:
                path = "/v1/chat/completions" if method == "V1" else "/api/chat"
                response = client.post(url + path, content=body, headers=headers)
            try:
                error = response.json()
                answered = error["error"]["param"] if method == "V1" else error.get("field")
            except (ValueError, KeyError, TypeError):
                answered = None
            results.append({"request": f"{method} {field}", "status": response.status_code, "field": answered,
                            "ok": 400 <= response.status_code < 500 and answered == field})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="trained model folders")
    parser.add_argument("--seed-size", action="store_true",
                        help="also a seed-size model with random weights (the first folder's tokenizer)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each mode per client count, the modes taking turns (the ratio: their median)")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="max_tokens of every request")
    parser.add_argument("--temperature", type=float,
                        help="every request's temperature (0: greedy; default: the folder's sampling settings)")
    parser.add_argument("--threads", type=int, help="the servers' --threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if not args.model_dirs:
        parser.error("give at least one model folder (its tokenizer is also the seed-size model's)")

    scratch = Path(tempfile.mkdtemp(prefix="smolite-load-"))
    folders = [(Path(folder).name, folder) for folder in args.model_dirs]
    if args.seed_size:
        folders.append(("seed size, random weights", str(seed_size_folder(args.model_dirs[0], scratch))))
    import torch

    cpu = cpu_description()
    machine = {"temperature": args.temperature, "cpu": cpu["model"], "cores": os.cpu_count(),
               "features": [name for name in ("avx512f", "avx512_bf16", "amx") if cpu[name]] or ["no AVX-512"],
               "torch_threads": args.threads or torch.get_num_threads(),
               "torch": torch.__version__}
    if not args.json:
        print(f"CPU: {machine['cpu']} ({machine['cores']} cores; {', '.join(machine['features'])}; servers with "
              f"{machine['torch_threads']} torch threads, torch {machine['torch']}); replies of up to {args.max_new_tokens} tokens, {args.seconds:g} s per run, "
              f"temperature {'of the folder' if args.temperature is None else args.temperature}")
    runs, rounds, bad, alive = [], [], [], True
    try:
        for label, folder in folders:
            servers = {mode: Server(folder, MODES[mode], args.threads) for mode in args.modes}  # idle ones cost nothing
            try:
                for server in servers.values():
                    asyncio.run(load(server, max(args.clients), 2.0, args.max_new_tokens, args.temperature))  # warm up
                for clients in args.clients:
                    parts: dict[str, list[dict]] = {mode: [] for mode in args.modes}
                    for round_ in range(args.rounds):  # the modes take turns, in ABBA order, against the drift
                        for mode in (args.modes if round_ % 2 == 0 else args.modes[::-1]):
                            parts[mode].append(asyncio.run(load(servers[mode], clients, args.seconds,
                                                                args.max_new_tokens, args.temperature)))
                    if len(parts) == 2 and all(p["tokens_per_s"] for p in parts["one-at-a-time"]):
                        pairs = list(zip(parts["batched"], parts["one-at-a-time"]))
                        ratios = {key: [round(b[key] / o[key], 2) for b, o in pairs]
                                  for key in ("tokens_per_s", "steady_tokens_per_s")}
                        rounds.append({"model": label, "clients": clients, "ratios": ratios["tokens_per_s"],
                                       "steady_ratios": ratios["steady_tokens_per_s"]})
                    for mode, measured in parts.items():
                        run = dict(combine(measured), model=label, mode=mode)
                        runs.append(run)
                        if not args.json:
                            print(f"  {label:28s} {mode:14s} {clients:3d} clients: {run['tokens_per_s']:7.1f} tokens/s "
                                  f"({run['steady_tokens_per_s']:.1f} while all clients wait), "
                                  f"TTFT p50 {run['ttft_p50_s']} s p99 {run['ttft_p99_s']} s, end to end p50 "
                                  f"{run['e2e_p50_s']} s p99 {run['e2e_p99_s']} s, {run['requests']} requests, "
                                  f"{run['errors']} errors, RSS {run['rss_mib_start']} -> {run['rss_mib_end']} MiB (after each round: "
                                  f"{', '.join(f'{rss:.1f}' for rss in run['rss_mib_after_rounds'])})",
                                  flush=True)
                for mode, server in servers.items():
                    bad += [dict(result, model=label, mode=mode) for result in malformed(server.url)]
                    alive &= httpx.get(f"{server.url}/health", timeout=30).json().get("status") == "ok"
            finally:
                for server in servers.values():
                    server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    speedups = [{"model": r["model"], "clients": r["clients"], "speedup": round(statistics.median(r["ratios"]), 2),
                 "rounds": r["ratios"], "steady_speedup": round(statistics.median(r["steady_ratios"]), 2),
                 "steady_rounds": r["steady_ratios"]} for r in rounds]
    ttfts = [t for r in runs for t in r.pop("_ttft")]
    e2es = [t for r in runs for t in r.pop("_e2e")]
    report = {
        "machine": machine, "max_new_tokens": args.max_new_tokens, "runs": runs, "speedups": speedups,
        "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
        "ttft_p50_s": percentile(ttfts, 0.5), "e2e_p50_s": percentile(e2es, 0.5),
        "malformed_requests": len(bad), "malformed_answered_4xx_naming_the_field": sum(r["ok"] for r in bad),
        "malformed_failures": [r for r in bad if not r["ok"]], "server_alive_after": alive,
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print()
        print("| model | clients | mode | tokens/s | tokens/s while all clients wait | TTFT p50 / p99 "
              "| end to end p50 / p99 | requests | errors | server RSS |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            print(f"| {r['model']} | {r['clients']} | {r['mode']} | {r['tokens_per_s']} | {r['steady_tokens_per_s']} | "
                  f"{r['ttft_p50_s']} / "
                  f"{r['ttft_p99_s']} s | {r['e2e_p50_s']} / {r['e2e_p99_s']} s | {r['requests']} | {r['errors']} | "
                  f"{r['rss_mib_start']:.0f} → {r['rss_mib_end']:.0f} MiB |")
        for s in speedups:
            print(f"batched / one-at-a-time, {s['model']}, {s['clients']} clients: {s['speedup']}x tokens/s "
                  f"(median of the rounds: {', '.join(f'{r}x' for r in s['rounds'])}); while all clients wait "
                  f"{s['steady_speedup']}x ({', '.join(f'{r}x' for r in s['steady_rounds'])})")
        print(f"malformed requests: {report['malformed_answered_4xx_naming_the_field']}/{report['malformed_requests']} "
              f"answered 4xx naming the field; servers alive after: {alive}")
        for failure in report["malformed_failures"]:
            print(f"  NOT OK: {failure}")
    return 0 if not report["errors"] and not report["malformed_failures"] and alive else 1


if __name__ == "__main__":
    sys.exit(main())
