"""`smolite serve`, the original protocol: SSE framing, GET and POST /api/chat, caps and 4xx errors, concurrency,
client disconnects, backpressure, generation errors and the command itself — against a real server on loopback.
The OpenAI routes, batching, access and metrics are in `test_openai_api.py`; real OpenAI clients in
`test_openai_client.py`."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from smolite_hf.chat import generate_reply, load_chat_model
from smolite_hf.serving import ServeLimits, create_app

from .serving import free_port, running, sse_events, wait_until

GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}


@pytest.fixture(scope="module")
def loaded(converted_dir):
    return load_chat_model(converted_dir, device="cpu")


@pytest.fixture(scope="module")
def server(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, limits=ServeLimits(max_message_chars=200, max_new_tokens=40))
    with running(app) as url:
        yield app.state.worker, url


@contextlib.contextmanager
def slow_model(model, seconds_per_step: float = 0.05):
    handle = model.get_decoder().register_forward_pre_hook(lambda module, args: time.sleep(seconds_per_step))
    try:
        yield
    finally:
        handle.remove()


def reference_reply(loaded, messages, max_new_tokens):
    model, tokenizer = loaded
    return generate_reply(model, tokenizer, messages, max_new_tokens=max_new_tokens, **GREEDY)


def post(url, body, **kwargs):
    return httpx.post(f"{url}/api/chat", json=body, timeout=60, **kwargs)


def test_health(server):
    worker, url = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["busy"] is False and health["waiting"] == 0 and health["running"] == 0


def test_get_streams_the_original_protocol(server):
    _, url = server
    response = httpx.get(f"{url}/api/chat", params={"message": "안녕하세요", "max_new_tokens": 12}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == {"done": True}
    pieces = events[:-1]
    assert pieces and all(set(event) == {"char"} and isinstance(event["char"], str) for event in pieces)


def test_post_reply_equals_generate_reply(server, loaded):
    _, url = server
    messages = [{"role": "user", "content": "오늘 날씨 어때?"}, {"role": "assistant", "content": "맑아요."},
                {"role": "user", "content": "그럼 산책 갈까?"}]
    events = sse_events(post(url, {"messages": messages, "max_new_tokens": 15, "do_sample": False}))
    assert events[-1] == {"done": True}
    streamed = "".join(event["char"] for event in events[:-1])
    assert streamed.strip() == reference_reply(loaded, messages, 15)
    assert streamed == streamed.lstrip()  # the reply starts with its first character, not the separator space


def test_seeded_sampling_is_reproducible(server):
    _, url = server
    body = {"messages": [{"role": "user", "content": "뭐 먹을까?"}], "max_new_tokens": 20, "seed": 7, "temperature": 1.5}
    first, second = sse_events(post(url, body)), sse_events(post(url, body))
    assert first[-1] == second[-1] == {"done": True}
    # the same reply; not necessarily in the same events, since pieces that arrive while the server's side of the
    # stream is busy go out as one (`GenerationJob.events`)
    assert "".join(event["char"] for event in first[:-1]) == "".join(event["char"] for event in second[:-1])
    assert len(first) > 5  # a reply of several pieces, not an empty one


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "message"),
        ({"message": "   "}, "message"),
        ({"message": "가" * 201}, "message"),
        ({"message": "hi", "max_new_tokens": "41"}, "max_new_tokens"),
        ({"message": "hi", "max_new_tokens": "-3"}, "max_new_tokens"),
        ({"message": "hi", "max_new_tokens": "many"}, "max_new_tokens"),
        ({"message": "hi", "temperature": "0.7"}, "temperature"),
    ],
)
def test_get_rejects_bad_parameters_naming_the_field(server, params, field):
    _, url = server
    response = httpx.get(f"{url}/api/chat", params=params)
    assert response.status_code == 400
    assert response.json()["field"] == field and field in response.json()["error"]


def test_get_rejects_invalid_utf8_in_the_query(server):
    _, url = server
    response = httpx.get(f"{url}/api/chat?message=%ff%fe")
    assert response.status_code == 400 and response.json()["field"] == "message"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 10**9}, "max_new_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": True}, "max_new_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 0}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "do_sample": "yes"}, "do_sample"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "stream"),
    ],
)
def test_post_rejects_bad_bodies_naming_the_field(server, body, field):
    _, url = server
    response = post(url, body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_post_rejects_bodies_that_are_not_json_or_not_utf8(server):
    _, url = server
    for content in (b"{not json", b'{"messages": [{"role": "user", "content": "\xff"}]}'):
        response = httpx.post(f"{url}/api/chat", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["field"] == "body"
    huge = b'{"messages": [{"role": "user", "content": "' + b"a" * 300_000 + b'"}]}'
    response = httpx.post(f"{url}/api/chat", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["error"] and response.json()["field"] == "body"

    def chunked():  # no Content-Length: the cap holds while the body is read
        for _ in range(30):
            yield b"a" * 10_000

    response = httpx.post(f"{url}/api/chat", content=chunked(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_two_concurrent_clients_receive_their_own_complete_replies(server, loaded):
    _, url = server
    conversations = [[{"role": "user", "content": "안녕하세요"}], [{"role": "user", "content": "주말에 뭐 했어?"}]]
    results: dict[int, list[dict]] = {}

    def client(i):
        results[i] = sse_events(post(url, {"messages": conversations[i], "max_new_tokens": 30, "do_sample": False}))

    with slow_model(loaded[0], 0.01):  # long enough that the two requests overlap
        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    for i, conversation in enumerate(conversations):
        assert results[i][-1] == {"done": True}
        assert "".join(e["char"] for e in results[i][:-1]).strip() == reference_reply(loaded, conversation, 30)


def test_a_disconnecting_client_stops_its_generation(server, loaded):
    worker, url = server
    before = dict(worker.stats)
    with slow_model(loaded[0], 0.2):  # 40 tokens would take 8 s
        with httpx.stream("POST", f"{url}/api/chat", timeout=60,
                          json={"messages": [{"role": "user", "content": "안녕"}], "max_new_tokens": 40, "do_sample": False}) as response:
            next(response.iter_lines())  # the first event arrived: generation is running
            started = time.monotonic()
        wait_until(lambda: worker.stats["cancelled"] == before["cancelled"] + 1 and worker.running == 0, timeout=5)
        assert time.monotonic() - started < 5
    assert worker.stats["served"] == before["served"]
    # the worker is free: the next request is served at once
    events = sse_events(post(url, {"messages": [{"role": "user", "content": "안녕"}], "max_new_tokens": 3}))
    assert events[-1] == {"done": True}


@pytest.fixture
def one_slot_server(loaded):
    """One running slot and one waiting place."""
    model, tokenizer = loaded
    app = create_app(model, tokenizer, limits=ServeLimits(max_new_tokens=40, max_running=1, max_waiting=1))
    with running(app) as url:
        yield app.state.worker, url


def test_a_full_server_answers_429_with_retry_after(one_slot_server, loaded):
    worker, url = one_slot_server
    body = {"messages": [{"role": "user", "content": "안녕"}], "max_new_tokens": 20, "do_sample": False}
    outcomes = []
    with slow_model(loaded[0], 0.1):
        threads = []
        for expect_running, expect_waiting in ((1, 0), (1, 1)):
            threads.append(threading.Thread(target=lambda: outcomes.append(sse_events(post(url, body)))))
            threads[-1].start()
            wait_until(lambda: worker.running == expect_running and worker.waiting == expect_waiting)
        refused = post(url, body)
        refused_get = httpx.get(f"{url}/api/chat", params={"message": "안녕"})
        for thread in threads:
            thread.join(60)
    for response in (refused, refused_get):
        assert response.status_code == 429 and "busy" in response.json()["error"]
        assert int(response.headers["Retry-After"]) >= 1
    assert [events[-1] for events in outcomes] == [{"done": True}, {"done": True}]


def test_a_waiting_client_that_disconnects_frees_its_place_at_once(one_slot_server, loaded):
    worker, url = one_slot_server
    before = dict(worker.stats)
    body = {"messages": [{"role": "user", "content": "안녕"}], "max_new_tokens": 20, "do_sample": False}
    first = []
    with slow_model(loaded[0], 0.1):
        thread = threading.Thread(target=lambda: first.append(sse_events(post(url, body))))
        thread.start()
        wait_until(lambda: worker.running == 1)
        with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=60) as response:
            assert response.status_code == 200
            wait_until(lambda: worker.waiting == 1)
        wait_until(lambda: worker.waiting == 0, timeout=5)  # gone from the queue while the first still runs
        assert worker.running == 1 and worker.stats["cancelled"] == before["cancelled"] + 1
        thread.join(60)
    assert first[0][-1] == {"done": True} and worker.stats["served"] == before["served"] + 1


def test_a_generation_error_ends_that_stream_and_the_server_keeps_serving(server, loaded):
    worker, url = server
    model = loaded[0]

    def explode(module, args):
        raise RuntimeError("simulated device failure")

    handle = model.get_decoder().register_forward_pre_hook(explode)
    try:
        events = sse_events(post(url, {"messages": [{"role": "user", "content": "안녕"}]}))
    finally:
        handle.remove()
    assert events == [{"error": "RuntimeError: simulated device failure"}]
    assert sse_events(post(url, {"messages": [{"role": "user", "content": "안녕"}], "max_new_tokens": 3}))[-1] == {"done": True}
    assert httpx.get(f"{url}/health").json()["failed"] >= 1


def test_the_page_is_self_contained(server):
    _, url = server
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)  # nothing fetched from elsewhere
    assert "api/chat" in page.text and "{{MODEL_NAME}}" not in page.text


@pytest.mark.slow
def test_smolite_serve_command_binds_to_loopback_and_serves(converted_dir, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "smolite_hf", "serve", str(converted_dir), "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        banner = ""
        while "Serving" not in banner:
            line = process.stdout.readline()
            assert line, f"smolite serve exited early: {banner}"
            banner += line
        assert f"http://127.0.0.1:{port}/" in banner and "only this machine" in banner
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/health"), timeout=30, interval=0.1)
        response = httpx.get(f"http://127.0.0.1:{port}/api/chat", params={"message": "안녕", "max_new_tokens": 5}, timeout=60)
        assert sse_events(response)[-1] == {"done": True}
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode in (0, -15)


@pytest.mark.slow
def test_smolite_serve_warns_on_a_network_address_without_a_key(converted_dir):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "smolite_hf", "serve", str(converted_dir), "--host", "0.0.0.0", "--port", str(port),
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1"}.items() if k != "SMOLITE_API_KEY"},
    )
    try:
        output = ""
        while "warning:" not in output:
            line = process.stdout.readline()
            assert line, f"smolite serve exited without the warning: {output}"
            output += line
        assert "reachable from the network" in output and "no API key" in output and "--api-key" in output
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.slow
def test_smolite_serve_takes_the_api_key_from_the_environment(converted_dir):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "smolite_hf", "serve", str(converted_dir), "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "SMOLITE_API_KEY": "s3cret"},
    )
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/health"), timeout=60, interval=0.1)
        params = {"message": "안녕", "max_new_tokens": 3}
        assert httpx.get(f"http://127.0.0.1:{port}/api/chat", params=params).status_code == 401
        response = httpx.get(f"http://127.0.0.1:{port}/api/chat", params=params, timeout=60,
                             headers={"Authorization": "Bearer s3cret"})
        assert sse_events(response)[-1] == {"done": True}
    finally:
        process.terminate()
        process.wait(30)


def test_smolite_serve_refuses_a_missing_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "smolite_hf", "serve", str(tmp_path / "nope")], capture_output=True, text=True)
    assert done.returncode == 2 and "no such model folder" in done.stderr


def _ok(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False
