"""`smolite serve`'s OpenAI routes, batching, access and metrics, against a live server on loopback (httpx).

Batching is checked where it can break: greedy replies of requests decoded together (some joining a running batch,
of different lengths, leaving at different steps) are token-identical to `generate()` alone; each request's sampling
settings and seed are its own; a client that goes away leaves the batch at once.
"""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from smolite_hf.chat import generate_reply, load_chat_model, prepare_generation
from smolite_hf.serving import BatchedGenerator, ServeLimits, create_app

from .serving import openai_stream, running, wait_until

GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
NAME = "smolite-tiny"
CONVERSATIONS = [
    [{"role": "user", "content": "안녕하세요"}],
    [{"role": "user", "content": "주말에 뭐 했어?"}],
    [{"role": "user", "content": "오늘 날씨 어때? 산책 가고 싶은데 비가 올까 걱정이야. 우산을 챙겨야 할까?"}],
    [{"role": "system", "content": "친절하게 대답해."}, {"role": "user", "content": "배고파"}],
    [{"role": "user", "content": "요즘 뭐 읽어?"}, {"role": "assistant", "content": "소설을 읽고 있어."},
     {"role": "user", "content": "추천해 줄 책 있어?"}],
    [{"role": "user", "content": "잘 자!"}],
    [{"role": "user", "content": "영화 추천해 줘. 무서운 거 말고 재미있는 걸로 부탁해. 주말에 친구랑 볼 거야."}],
    [{"role": "user", "content": "피곤하다"}],
    [{"role": "user", "content": "내일 뭐 해?"}],
    [{"role": "user", "content": "커피 마실래?"}, {"role": "assistant", "content": "좋아요."}, {"role": "user", "content": "어디서?"}],
]


@pytest.fixture(scope="module")
def loaded(converted_dir):
    return load_chat_model(converted_dir, device="cpu")


@pytest.fixture(scope="module")
def server(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, name=NAME, limits=ServeLimits(max_message_chars=200, max_new_tokens=40))
    with running(app) as url:
        yield app.state.worker, url


def completions(url, body, **kwargs):
    return httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, **body}, timeout=120, **kwargs)


def reference(loaded, messages, max_new_tokens, seed=None, **settings):
    """`generate_reply()` alone, and the number of tokens `generate()` produced."""
    model, tokenizer = loaded
    settings = settings or GREEDY
    if seed is not None:
        torch.manual_seed(seed)
    text = generate_reply(model, tokenizer, messages, max_new_tokens=max_new_tokens, **settings)
    if seed is not None:
        torch.manual_seed(seed)
    input_ids, config = prepare_generation(model, tokenizer, messages, max_new_tokens=max_new_tokens, **settings)
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    return text, output.shape[1] - input_ids.shape[1], input_ids.shape[1]


@contextlib.contextmanager
def paced(model, seconds: float = 0.02):
    """Slow every forward pass, so that a client reads each token's chunk before the next one exists."""
    handle = model.get_decoder().register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def gated(model, worker, count):
    """Hold the worker's first forward pass until `count` requests are in (so they are decoded together), and record
    the batch size of every forward pass."""
    gate, sizes = threading.Event(), []

    def hook(module, args, kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        gate.wait(60)
        time.sleep(0.005)  # long enough that later arrivals join a running batch

    handle = model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield gate, sizes
    finally:
        gate.set()
        handle.remove()
    wait_until(lambda: worker.running == 0 and worker.waiting == 0)


def in_threads(functions):
    results = [None] * len(functions)

    def call(i):
        results[i] = functions[i]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    return threads, results


# ---------------------------------------------------------------------------------------------------------------
# the routes


def test_models_lists_the_served_model(server):
    _, url = server
    listing = httpx.get(f"{url}/v1/models").json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == [NAME]
    card = listing["data"][0]
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]
    assert httpx.get(f"{url}/v1/models/{NAME}").json() == card
    missing = httpx.get(f"{url}/v1/models/gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_completion_has_every_field_and_equals_generate_reply(server, loaded):
    _, url = server
    messages = CONVERSATIONS[4]
    text, tokens, prompt_tokens = reference(loaded, messages, 15)
    reply = completions(url, {"messages": messages, "max_tokens": 15, "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == NAME
    assert abs(body["created"] - time.time()) < 600
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["message"]["content"] == text
    assert choice["finish_reason"] == ("length" if tokens == 15 else "stop")
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                             "total_tokens": prompt_tokens + tokens}


def test_max_completion_tokens_caps_the_reply_with_finish_reason_length(server, loaded):
    _, url = server
    body = completions(url, {"messages": CONVERSATIONS[0], "max_completion_tokens": 4, "temperature": 0}).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["message"]["content"] == reference(loaded, CONVERSATIONS[0], 4)[0]


def test_a_stream_is_chunks_then_done(server, loaded):
    _, url = server
    messages = CONVERSATIONS[2]
    text, tokens, prompt_tokens = reference(loaded, messages, 20)
    with paced(loaded[0]):
        response = completions(url, {"messages": messages, "max_tokens": 20, "temperature": 0, "stream": True,
                                     "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    payloads = openai_stream(response)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == NAME for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *content, last, usage = chunks
    assert all(c["usage"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == text
    assert len(content) > 2  # it streamed (deltas the reader has not taken yet are merged, hence `paced`)
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                                         "total_tokens": prompt_tokens + tokens}


def test_a_stream_without_include_usage_has_no_usage_chunk(server):
    _, url = server
    payloads = openai_stream(completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 3, "stream": True}))
    assert payloads[-1] == "[DONE]" and all("usage" not in p for p in payloads[:-1])
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_reply_and_is_not_returned(server, loaded, stream):
    _, url = server
    messages = CONVERSATIONS[6]
    full = reference(loaded, messages, 30)[0]
    stop = full[6:9]  # three characters from the middle: the text is held back while it may become the stop
    expected = full[: full.find(stop)].strip()
    body = {"messages": messages, "max_tokens": 30, "temperature": 0, "stop": [stop, "never-generated"],
            "stream": stream}
    response = completions(url, body)
    if stream:
        chunks = openai_stream(response)[:-1]
        content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        reason = chunks[-1]["choices"][0]["finish_reason"]
    else:
        content = response.json()["choices"][0]["message"]["content"]
        reason = response.json()["choices"][0]["finish_reason"]
    assert content == expected and stop not in content and reason == "stop"
    one = completions(url, {"messages": messages, "max_tokens": 30, "temperature": 0, "stop": stop}).json()
    assert one["choices"][0]["message"]["content"] == expected


def test_the_developer_role_and_text_parts_are_accepted(server, loaded):
    _, url = server
    messages = [{"role": "developer", "content": "친절하게 대답해."},
                {"role": "user", "content": [{"type": "text", "text": "배"}, {"type": "text", "text": "고파"}]}]
    body = completions(url, {"messages": messages, "max_tokens": 8, "temperature": 0}).json()
    assert body["choices"][0]["message"]["content"] == reference(loaded, CONVERSATIONS[3], 8)[0]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user", "content": "가" * 201}]}, "messages[0].content", "invalid_value"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0].type", "invalid_value"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "invalid_value"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages", None),
        ({"max_tokens": 41}, "max_tokens", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 10**9}, "max_completion_tokens", "invalid_value"),
        ({"temperature": -1}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"n": 2}, "n", "invalid_value"),
        ({"presence_penalty": 0.5}, "presence_penalty", "invalid_value"),
        ({"frequency_penalty": -1}, "frequency_penalty", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": ""}, "stop", "invalid_value"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid_type"),
        ({"tools": []}, "tools", "unknown_parameter"),
        ({"logprobs": True}, "logprobs", "unknown_parameter"),
        ({"model": None}, "model", "invalid_type"),
    ],
)
def test_bad_requests_get_openai_shaped_400s_naming_the_parameter(server, body, param, code):
    _, url = server
    response = completions(url, {"messages": [{"role": "user", "content": "hi"}], **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert param.split("[")[0].split(".")[0] in error["message"] or param == "messages"


def test_requests_that_are_not_json_too_large_or_for_another_model(server):
    _, url = server
    headers = {"Content-Type": "application/json"}
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"{nope", headers=headers).json()["error"]
    assert bad["param"] == "body" and "not valid JSON" in bad["message"]
    missing = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_required_parameter"
    huge = httpx.post(f"{url}/v1/chat/completions", headers=headers,
                      content=b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * 300_000 + b'"}]}')
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    other = completions(url, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert other.status_code == 404 and other.json()["error"]["param"] == "model"
    assert NAME in other.json()["error"]["message"]
    nowhere = httpx.get(f"{url}/v1/embeddings")
    assert nowhere.status_code == 404 and set(nowhere.json()["error"]) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("merged", [True, False])
def test_concurrent_greedy_replies_are_token_identical_to_generate_alone(server, loaded, monkeypatch, merged):
    """Ten requests of different lengths and caps: six start together, four join the running batch — their prompts
    in its decoding pass (`merged`), or in a pass of their own."""
    worker, url = server
    if not merged:
        monkeypatch.setattr(worker, "merge_prompts", False)
    merges = []
    merge = worker._decode_and_prefill
    monkeypatch.setattr(worker, "_decode_and_prefill", lambda newcomers: merges.append(len(newcomers)) or merge(newcomers))
    caps = [30, 12, 25, 8, 20, 30, 5, 17, 30, 10]
    expected = [reference(loaded, messages, cap) for messages, cap in zip(CONVERSATIONS, caps)]

    def ask(i, stream):
        body = {"messages": CONVERSATIONS[i], "max_tokens": caps[i], "temperature": 0, "stream": stream,
                "stream_options": {"include_usage": True} if stream else None}
        response = completions(url, {k: v for k, v in body.items() if v is not None})
        if not stream:
            reply = response.json()
            return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"]
        chunks = openai_stream(response)[:-1]
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]), chunks[-1]["usage"]["completion_tokens"]

    with gated(loaded[0], worker, 6) as (gate, sizes):
        first, first_results = in_threads([lambda i=i: ask(i, i % 2 == 0) for i in range(6)])
        wait_until(lambda: worker.running + worker.waiting == 6)
        gate.set()
        wait_until(lambda: len(sizes) >= 3)  # the batch is decoding
        later, later_results = in_threads([lambda i=i: ask(i, i % 2 == 1) for i in range(6, 10)])
        for thread in first + later:
            thread.join(120)
    results = first_results + later_results
    for i, ((text, tokens), (expected_text, expected_tokens, _)) in enumerate(zip(results, expected)):
        assert (text, tokens) == (expected_text, expected_tokens), f"request {i}"
    assert max(sizes) >= 5  # they were decoded together, not one after another
    assert (sum(merges) >= 1) == merged  # some joined in a merged pass, or none


def test_each_request_samples_with_its_own_settings_and_seed(server, loaded):
    worker, url = server
    asks = [(CONVERSATIONS[1], {"temperature": 1.5}, 3), (CONVERSATIONS[1], {"temperature": 1.5}, 4),
            (CONVERSATIONS[5], {"temperature": 0.7, "top_p": 0.8}, 3), (CONVERSATIONS[8], {"temperature": 1.0}, 11),
            (CONVERSATIONS[0], {"temperature": 0}, None)]
    expected = []
    for messages, settings, seed in asks:
        generate_settings = GREEDY if settings["temperature"] == 0 else {"do_sample": True, **settings}
        expected.append(reference(loaded, messages, 20, seed=seed, **generate_settings)[0])

    def ask(messages, settings, seed):
        body = {"messages": messages, "max_tokens": 20, **settings, **({"seed": seed} if seed is not None else {})}
        return completions(url, body).json()["choices"][0]["message"]["content"]

    with gated(loaded[0], worker, len(asks)) as (gate, sizes):
        threads, results = in_threads([lambda a=a: ask(*a) for a in asks])
        wait_until(lambda: worker.running + worker.waiting == len(asks))
        gate.set()
        for thread in threads:
            thread.join(120)
    assert results == expected
    assert results[0] != results[1]  # same settings, other seed
    assert max(sizes) >= 4


def test_the_worker_stops_at_end_and_counts_it(loaded):
    """`<end>` (made likely by a +100 bias) finishes with `stop`; the ids are generate()'s, `<end>` included."""
    model, tokenizer = loaded
    worker = BatchedGenerator(model, tokenizer).start()
    try:
        settings = {**GREEDY, "sequence_bias": [[[model.config.eos_token_id], 100.0]], "min_length": 0}
        jobs = [worker.submit(*worker.prepare(messages, max_new_tokens=20, **settings)) for messages in CONVERSATIONS[:3]]
        for messages, job in zip(CONVERSATIONS, jobs):
            result = job.result(60)
            input_ids, config = prepare_generation(model, tokenizer, messages, max_new_tokens=20, **settings)
            with torch.no_grad():
                output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
            assert list(result.token_ids) == output[0, input_ids.shape[1]:].tolist()
            assert result.finish_reason == "stop" and result.token_ids[-1] == model.config.eos_token_id
            assert result.completion_tokens == len(result.token_ids) and result.text == ""
    finally:
        worker.close()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_leaves_the_batch_at_once(server, loaded, stream):
    worker, url = server
    before = dict(worker.stats)
    body = {"model": NAME, "messages": CONVERSATIONS[0], "max_tokens": 40, "temperature": 0, "stream": stream}
    handle = loaded[0].get_decoder().register_forward_pre_hook(lambda module, args: time.sleep(0.2))  # 40 tokens: 8 s
    try:
        if stream:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
                lines = response.iter_lines()
                while '"content": ""' not in next(lines):
                    pass
                wait_until(lambda: worker.stats["generated_tokens"] > before["generated_tokens"])
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=1.0)
        left = time.monotonic()
        wait_until(lambda: worker.running == 0 and worker.stats["cancelled"] == before["cancelled"] + 1, timeout=5)
        assert time.monotonic() - left < 5
    finally:
        handle.remove()
    assert worker.stats["served"] == before["served"]
    assert completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 2}).status_code == 200


def test_past_the_caps_the_openai_route_answers_429(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, name=NAME, limits=ServeLimits(max_running=1, max_waiting=0))
    worker = app.state.worker
    with running(app) as url:
        handle = model.get_decoder().register_forward_pre_hook(lambda module, args: time.sleep(0.05))
        try:
            threads, results = in_threads([lambda: completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 20})])
            wait_until(lambda: worker.running == 1)
            refused = completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 20, "stream": True})
            threads[0].join(60)
        finally:
            handle.remove()
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error" and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert results[0].status_code == 200


def test_a_failing_forward_fails_its_requests_and_the_server_goes_on(server, loaded):
    _, url = server

    def explode(module, args):
        raise RuntimeError("simulated device failure")

    handle = loaded[0].get_decoder().register_forward_pre_hook(explode)
    try:
        plain = completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 5})
        streamed = openai_stream(completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 5, "stream": True}))
    finally:
        handle.remove()
    assert plain.status_code == 500 and plain.json()["error"]["type"] == "server_error"
    assert "simulated device failure" in plain.json()["error"]["message"]
    assert streamed[-1] == "[DONE]" and "simulated device failure" in streamed[-2]["error"]["message"]
    assert completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 3}).status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# access


@pytest.fixture(scope="module")
def guarded(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, name=NAME, api_key="s3cret-key", cors_origins=("https://app.example",))
    with running(app) as url:
        yield url


def test_an_api_key_is_required_on_every_route_but_health_and_the_page(guarded):
    url = guarded
    key = {"Authorization": "Bearer s3cret-key"}
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/").status_code == 200
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
                         ("GET", "/api/chat?message=hi"), ("POST", "/api/chat")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}):
            response = httpx.request(method, url + path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            if path.startswith("/v1/"):
                assert response.json()["error"]["code"] == "invalid_api_key"
            else:
                assert "API key" in response.json()["error"]
    assert httpx.get(f"{url}/v1/models", headers=key).status_code == 200
    assert httpx.get(f"{url}/metrics", headers=key).status_code == 200
    reply = httpx.post(f"{url}/v1/chat/completions", headers=key, timeout=60,
                       json={"model": NAME, "messages": CONVERSATIONS[0], "max_tokens": 3})
    assert reply.status_code == 200


def test_other_origins_are_refused_unless_allowed(server, guarded):
    plain_url, url = server[1], guarded
    for method in ("GET", "OPTIONS"):
        refused = httpx.request(method, f"{plain_url}/v1/models", headers={"Origin": "http://evil.example",
                                                                          "Access-Control-Request-Method": "GET"})
        assert refused.status_code == 403 and "--cors-origin" in refused.json()["error"]["message"]
        assert "access-control-allow-origin" not in refused.headers
    refused = httpx.get(f"{plain_url}/api/chat", params={"message": "hi"}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    same = httpx.get(f"{plain_url}/v1/models", headers={"Origin": plain_url})  # the page's own origin
    assert same.status_code == 200

    allowed = {"Origin": "https://app.example"}
    preflight = httpx.options(f"{url}/v1/chat/completions", headers={
        **allowed, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"
    answer = httpx.get(f"{url}/v1/models", headers={**allowed, "Authorization": "Bearer s3cret-key"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.get(f"{url}/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer s3cret-key"})
    assert other.status_code == 403


# ---------------------------------------------------------------------------------------------------------------
# metrics


def test_metrics_count_requests_tokens_and_latencies(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, name=NAME)
    with running(app) as url:
        for _ in range(2):
            assert completions(url, {"messages": CONVERSATIONS[0], "max_tokens": 4}).status_code == 200
        assert completions(url, {"messages": CONVERSATIONS[0], "n": 3}).status_code == 400
        assert httpx.get(f"{url}/api/chat", params={"message": "안녕", "max_new_tokens": 3}).status_code == 200
        text = httpx.get(f"{url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("smolite_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))] == 2
    assert samples[("smolite_requests_total", (("route", "/v1/chat/completions"), ("status", "400")))] == 1
    assert samples[("smolite_requests_total", (("route", "/api/chat"), ("status", "200")))] == 1
    assert samples[("smolite_generated_tokens_total", ())] == 11
    assert samples[("smolite_running_requests", ())] == 0 and samples[("smolite_waiting_requests", ())] == 0
    assert samples[("smolite_time_to_first_token_seconds_count", ())] == 3
    assert samples[("smolite_request_duration_seconds_count", (("route", "/v1/chat/completions"),))] == 3
    assert samples[("smolite_request_duration_seconds_count", (("route", "/api/chat"),))] == 1
