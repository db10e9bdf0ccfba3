"""Helpers for the server tests: a uvicorn server on a free loopback port in a thread, SSE and OpenAI stream readers."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import uvicorn


@contextlib.contextmanager
def running(app):
    """Serve `app` on 127.0.0.1 (a free port) for the duration of the block; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def sse_events(response: httpx.Response) -> list[dict]:
    """The JSON objects of an SSE response, checking the framing: blocks of `data:` lines separated by a blank line."""
    events = []
    text = response.read().decode("utf-8").replace("\r\n", "\n")
    assert text.endswith("\n\n"), f"an SSE stream ends with a blank line: {text[-40:]!r}"
    for block in text.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if not line.startswith(":")]  # ":" lines are keep-alive comments
        if not lines:
            continue
        assert all(line.startswith("data: ") for line in lines), f"not an SSE data block: {block!r}"
        events.append(json.loads("\n".join(line[len("data: ") :] for line in lines)))
    return events


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def openai_stream(response: httpx.Response) -> list:
    """The `data:` payloads of an OpenAI stream: JSON chunks, and the final `[DONE]` as the string itself."""
    payloads = []
    for line in response.read().decode("utf-8").replace("\r\n", "\n").split("\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads
