"""`memory.keep_freed_memory`, as `smolite serve` uses it: a decoding step's tensors are not page-faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

STEPS_PROBE = """
import resource, sys, threading
import torch
from smolite_hf.memory import keep_freed_memory

took = keep_freed_memory() if sys.argv[1] == "keep" else None

weight = torch.randn(72000, 256)  # the seed size's output head


def steps():  # decoding steps of 1 to 8 seed-size rows, as requests come and go: logits and their processed copies
    for step in range(200):
        hidden = torch.randn(1 + step % 8, 256)
        logits = torch.mm(weight, hidden.t()).t().contiguous()
        scores = logits / 0.5
        probs = scores.softmax(-1)
        del logits, scores, probs


worker = threading.Thread(target=steps)  # the serving worker is a thread of its own (its own malloc arena)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
worker.start(); worker.join()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist only on Linux")
def test_kept_freed_memory_spares_a_decoding_thread_its_page_faults():
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", STEPS_PROBE, mode], capture_output=True, text=True, check=True)
        took, count = done.stdout.split()
        return took, int(count)

    (plain_took, plain), (kept_took, kept) = faults("plain"), faults("keep")
    assert (plain_took, kept_took) == ("None", "True")
    # by default glibc's threshold for fresh mappings follows the sizes freed, and the heap's top is given back:
    # most of the 0.3-2.3 MB tensors are faulted in page by page (measured: about 176000 faults against 3500)
    assert plain > 50_000 and kept < plain / 10, (plain, kept)


def test_smolite_serve_keeps_freed_memory_before_it_loads_the_model(monkeypatch, tmp_path):
    import uvicorn

    from smolite_hf import chat, memory
    from smolite_hf.serving import app, command

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(chat, "load_chat_model", lambda *args, **kwargs: calls.append("load") or (None, None))
    monkeypatch.setattr(app, "create_app", lambda *args, **kwargs: calls.append("app"))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append("run"))
    assert command.serve(tmp_path) == 0
    assert calls == ["keep", "load", "app", "run"]
