"""The official `openai` Python package, sync and async, against a live `smolite serve` app with an API key."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from smolite_hf.chat import generate_reply, load_chat_model
from smolite_hf.serving import ServeLimits, create_app

from .serving import running

NAME = "smolite-tiny"
KEY = "sk-test-smolite"
GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
MESSAGES = [{"role": "system", "content": "친절하게 대답해."}, {"role": "user", "content": "주말에 뭐 하면 좋을까?"}]


@pytest.fixture(scope="module")
def loaded(converted_dir):
    return load_chat_model(converted_dir, device="cpu")


@pytest.fixture(scope="module")
def base_url(loaded):
    model, tokenizer = loaded
    app = create_app(model, tokenizer, name=NAME, api_key=KEY, limits=ServeLimits(max_new_tokens=40))
    with running(app) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def expected(loaded):
    model, tokenizer = loaded
    return generate_reply(model, tokenizer, MESSAGES, max_new_tokens=16, **GREEDY)


def client(base_url, key=KEY):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)


def test_sync_client_lists_the_model_and_completes(base_url, expected):
    with client(base_url) as sync:
        assert [model.id for model in sync.models.list()] == [NAME]
        completion = sync.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=16, temperature=0)
    assert completion.object == "chat.completion" and completion.model == NAME
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_sync_client_streams_with_usage(base_url, expected, loaded):
    handle = loaded[0].get_decoder().register_forward_pre_hook(lambda module, args: time.sleep(0.02))  # one chunk per token
    try:
        with client(base_url) as sync:
            stream = sync.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=16, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
            chunks = list(stream)
    finally:
        handle.remove()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_async_client_completes_and_streams(base_url, expected):
    async def run():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60) as async_client:
            plain, stream = await asyncio.gather(
                async_client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=16, temperature=0),
                async_client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=16, temperature=0,
                                                     stream=True),
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content, streamed

    plain, streamed = asyncio.run(run())
    assert plain == expected and streamed == expected


def test_a_wrong_key_is_an_authentication_error(base_url):
    with client(base_url, key="sk-wrong") as sync, pytest.raises(openai.AuthenticationError) as raised:
        sync.chat.completions.create(model=NAME, messages=MESSAGES)
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"

    async def run():
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0) as async_client:
            await async_client.models.list()

    with pytest.raises(openai.AuthenticationError):
        asyncio.run(run())


def test_a_bad_parameter_is_a_bad_request_naming_it(base_url):
    with client(base_url) as sync:
        with pytest.raises(openai.BadRequestError) as raised:
            sync.chat.completions.create(model=NAME, messages=MESSAGES, n=2)
        assert raised.value.status_code == 400 and raised.value.param == "n" and "n must be 1" in raised.value.message
        with pytest.raises(openai.BadRequestError) as raised:
            sync.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=500, stream=True)
        assert raised.value.param == "max_tokens"
        with pytest.raises(openai.NotFoundError) as raised:
            sync.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert raised.value.code == "model_not_found"
