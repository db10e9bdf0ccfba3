"""Load test of `smolite serve` on loopback: N concurrent clients for a fixed time, then a barrage of malformed requests.

    python benchmarks/load_serve.py runs/quickstart --clients 8 --seconds 60

Starts `smolite serve MODEL_DIR` as its own process (so its memory is measured alone), then each client loops over
`GET /api/chat?message=...` (the original protocol) with `max_new_tokens` replies. Reports requests/s, time to first
piece and end-to-end latency (p50/p99), errors (a non-200 answer, an `{"error"}` event, or a stream without
`{"done": true}`), and the server's resident memory at the start and end of the load. Then sends malformed requests
(oversized query, invalid UTF-8, negative/huge/non-integer `max_new_tokens`, unknown fields, bad JSON bodies) and
checks each gets a 4xx naming the field, and that the server still answers afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

MESSAGES = ["안녕하세요", "주말에 뭐 하면 좋을까?", "오늘 날씨 어때?", "배고파", "요즘 뭐 읽어?", "잘 자!", "영화 추천해 줘", "피곤하다"]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_request(client: httpx.Client, url: str, message: str, max_new_tokens: int) -> tuple[float, float, str | None]:
    started = time.perf_counter()
    first = None
    done = False
    error = None
    with client.stream("GET", f"{url}/api/chat", params={"message": message, "max_new_tokens": max_new_tokens}) as response:
        if response.status_code != 200:
            return 0.0, 0.0, f"HTTP {response.status_code}"
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if "char" in event and first is None:
                first = time.perf_counter() - started
            elif event.get("done"):
                done = True
            elif "error" in event:
                error = event["error"]
    total = time.perf_counter() - started
    if error is None and not done:
        error = "stream ended without done"
    return (first if first is not None else total), total, error


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


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
]


def malformed(url: str) -> list[dict]:
    results = []
    with httpx.Client(timeout=30) as client:
        for method, params, body, field in MALFORMED:
            if method == "GET":
                target = f"{url}/api/chat?{params}" if isinstance(params, str) else f"{url}/api/chat"
                response = client.get(target, params=None if isinstance(params, str) else params)
            else:
                response = client.post(f"{url}/api/chat", content=body, headers={"Content-Type": "application/json"})
            try:
                answered = response.json().get("field")
            except ValueError:
                answered = None
            results.append({"request": f"{method} {field}", "status": response.status_code, "field": answered,
                            "ok": 400 <= response.status_code < 500 and answered == field})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "smolite_hf", "serve", args.model_dir, "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        with httpx.Client(timeout=120) as client:  # warm up
            one_request(client, url, MESSAGES[0], args.max_new_tokens)
        rss_start = rss_mib(server.pid)
        samples = [rss_start]
        records: list[tuple[float, float, str | None]] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client_loop(seed: int) -> None:
            chooser = random.Random(seed)
            with httpx.Client(timeout=300) as client:
                while time.monotonic() < stop_at:
                    try:
                        result = one_request(client, url, chooser.choice(MESSAGES), args.max_new_tokens)
                    except httpx.HTTPError as error:
                        result = (0.0, 0.0, f"{type(error).__name__}: {error}")
                    with lock:
                        records.append(result)

        started = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            samples.append(rss_mib(server.pid))
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        rss_end = rss_mib(server.pid)
        bad = malformed(url)
        alive = httpx.get(f"{url}/health", timeout=30).json()
    finally:
        server.terminate()
        server.wait(30)

    good = [r for r in records if r[2] is None]
    errors = [r[2] for r in records if r[2] is not None]
    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "max_new_tokens": args.max_new_tokens,
        "requests": len(records),
        "requests_per_s": round(len(records) / elapsed, 2),
        "errors": len(errors),
        "error_examples": errors[:3],
        "ttft_p50_s": round(percentile([r[0] for r in good], 0.5), 3) if good else None,
        "ttft_p99_s": round(percentile([r[0] for r in good], 0.99), 3) if good else None,
        "e2e_p50_s": round(percentile([r[1] for r in good], 0.5), 3) if good else None,
        "e2e_p99_s": round(percentile([r[1] for r in good], 0.99), 3) if good else None,
        "rss_mib_start": round(rss_start, 1),
        "rss_mib_end": round(rss_end, 1),
        "rss_mib_max": round(max(samples), 1),
        "rss_growth": round(rss_end / rss_start, 3),
        "malformed_requests": len(bad),
        "malformed_answered_4xx_naming_the_field": sum(r["ok"] for r in bad),
        "malformed_failures": [r for r in bad if not r["ok"]],
        "server_alive_after": alive.get("status") == "ok",
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(f"smolite serve {args.model_dir}: {args.clients} clients for {report['seconds']} s, "
              f"replies of up to {args.max_new_tokens} tokens, on {os.cpu_count()} CPU cores")
        print(f"  requests            {report['requests']} ({report['requests_per_s']}/s), errors {report['errors']}")
        print(f"  time to first piece p50 {report['ttft_p50_s']} s, p99 {report['ttft_p99_s']} s "
              "(a request waits for the ones queued before it)")
        print(f"  end to end          p50 {report['e2e_p50_s']} s, p99 {report['e2e_p99_s']} s")
        print(f"  server memory       {report['rss_mib_start']} MiB at start, {report['rss_mib_end']} MiB at end "
              f"(max {report['rss_mib_max']}), x{report['rss_growth']}")
        print(f"  malformed requests  {report['malformed_answered_4xx_naming_the_field']}/{report['malformed_requests']} "
              f"answered 4xx naming the field; server alive after: {report['server_alive_after']}")
        for failure in report["malformed_failures"]:
            print(f"    NOT OK: {failure}")
    return 0 if not errors and not report["malformed_failures"] and report["server_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
