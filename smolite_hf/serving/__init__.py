"""`smolite serve`: an OpenAI-compatible chat server that batches concurrent requests, with a chat page.

| module | holds |
|---|---|
| `app.py` | `create_app(model, tokenizer, ...)`: the routes, access (API key, origins), error replies |
| `schemas.py` | the typed requests (pydantic) and `RequestError` |
| `worker.py` | `BatchedGenerator`: the thread that decodes every running request together |
| `metrics.py` | the Prometheus metrics of `GET /metrics` |
| `limits.py` | `ServeLimits`: the caps on requests and on concurrency |
| `command.py` | the `smolite serve` command: `add_arguments(parser)`, `main(args)`, `serve(model_dir, ...)` |

Only `limits` and `command` are imported with the package (so `smolite --help` stays light); the rest on first use.
"""

from __future__ import annotations

import importlib

from .command import add_arguments, main, serve
from .limits import ServeLimits

_LAZY = {"create_app": "app", "BatchedGenerator": "worker", "Overloaded": "worker", "RequestError": "schemas"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BatchedGenerator", "Overloaded", "RequestError", "ServeLimits", "add_arguments", "create_app", "main",
           "serve"]
