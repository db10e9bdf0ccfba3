"""Chatting with a Smolite folder: the functions behind `smolite chat`.

Decoding is `generate()` with the folder's `generation_config.json` (the seed's streaming chat decoding unless
overridden) and the library's `TextStreamer`.

The window rule: Smolite was trained on windows of `config.max_position_embeddings` positions (100 for every released
size), so a reply never runs past that window. The prompt (the chat template's rendering of the conversation) keeps
its most recent tokens — whole earlier turns are dropped first, then the start of the last user message — so that at
least `min_reply_room` positions stay free for the reply, and `max_new_tokens` is capped at the room left. (The
original slid its window and restarted positions at 0, which the model never saw in training.)
"""

from __future__ import annotations

import copy
import os
import torch
from transformers import GenerationConfig, TextStreamer

from .folders import ModelFolderError, check_model_folder, load_model, load_tokenizer


def load_chat_model(model_dir: str | os.PathLike, device: str | None = None, dtype: str = "float32",
                    allow_pickle: bool = False):
    """`(model, tokenizer)` from a folder written by `smolite train` / `smolite convert --tokenizer`.

    The folder is checked first (`smolite_hf.folders.check_model_folder`: a `ModelFolderError` names the file and
    the problem). `device` defaults to CUDA when available, else CPU; `dtype` is `float32` or `bfloat16`.
    """
    check_model_folder(model_dir, allow_pickle=allow_pickle)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_dir, allow_pickle=allow_pickle, dtype=getattr(torch, dtype)).to(device).eval()
    return model, load_tokenizer(model_dir)


def fit_to_window(tokenizer, messages: list[dict], window: int, min_reply_room: int) -> list[int]:
    """Prompt ids of `messages` that leave at least `min_reply_room` of the `window` free (see the module doc)."""
    limit = window - min_reply_room
    messages = list(messages)
    while True:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        if len(ids) <= limit:
            return ids
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        if len(messages) - first_user > 2:  # drop the oldest user/assistant pair
            del messages[first_user : first_user + 2]
            continue
        start = ids[:2]  # "▁", "<start>": the prompt keeps its beginning marker and its most recent tokens
        return start + ids[len(ids) - (limit - len(start)) :]


def prepare_generation(model, tokenizer, messages: list[dict], generation_config: GenerationConfig | None = None,
                       min_reply_room: int = 20, **overrides) -> tuple[torch.Tensor, GenerationConfig]:
    """`(input_ids, generation_config)` for answering `messages` under the window rule (see the module doc)."""
    window = model.config.max_position_embeddings
    prompt = fit_to_window(tokenizer, messages, window, min(min_reply_room, window // 2))
    config = copy.deepcopy(generation_config or model.generation_config)
    config.update(**overrides)
    config.max_new_tokens = min(config.max_new_tokens or window, window - len(prompt))
    return torch.tensor([prompt], device=model.device), config


def generate_reply(
    model,
    tokenizer,
    messages: list[dict],
    generation_config: GenerationConfig | None = None,
    streamer=None,
    min_reply_room: int = 20,
    **overrides,
) -> str:
    """The assistant's reply to `messages` (chat-template dicts), decoded without special tokens."""
    input_ids, config = prepare_generation(model, tokenizer, messages, generation_config, min_reply_room, **overrides)
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=streamer)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def chat(model_dir, prompt: str | None = None, seed: int | None = None, device: str | None = None,
         dtype: str = "float32", allow_pickle: bool = False, **overrides) -> int:
    """Answer `prompt` once (streamed to stdout), or hold an interactive conversation until `quit` / Ctrl-C / EOF."""
    model, tokenizer = load_chat_model(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if seed is not None:
        torch.manual_seed(seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if prompt is not None:
        generate_reply(model, tokenizer, [{"role": "user", "content": prompt}], streamer=streamer, **overrides)
        return 0
    print("Smolite chat. Type 'quit' (or press Ctrl-C) to leave.")
    history: list[dict] = []
    try:
        while True:
            text = input("you> ").strip()
            if text in ("quit", "exit"):
                break
            if not text:
                continue
            history.append({"role": "user", "content": text})
            print("smolite> ", end="", flush=True)
            reply = generate_reply(model, tokenizer, history, streamer=streamer, **overrides)
            history.append({"role": "assistant", "content": reply})
    except (EOFError, KeyboardInterrupt):
        print()
    return 0


__all__ = ["ModelFolderError", "chat", "fit_to_window", "generate_reply", "load_chat_model", "prepare_generation"]
