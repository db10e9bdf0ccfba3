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
import json
import os
import warnings
from pathlib import Path

import torch
from transformers import GenerationConfig, TextStreamer
from transformers.utils import logging as transformers_logging

from .folders import ModelFolderError, check_model_folder, load_model, load_tokenizer


def load_chat_model(model_dir: str | os.PathLike, device: str | None = None, dtype: str = "float32",
                    allow_pickle: bool = False):
    """`(model, tokenizer)` from a folder written by `smolite train` / `smolite convert --tokenizer`.

    The folder is checked first (`smolite_hf.folders.check_model_folder`: a `ModelFolderError` names the file and
    the problem). `device` defaults to CUDA when available, else CPU; `dtype` is `float32` or `bfloat16`.
    A LoRA folder (`smolite train --lora`: `adapter_config.json`, no `config.json`) loads its base model
    (`base_model_name_or_path`) with the adapter merged in; that needs peft (`pip install "smolite_hf[peft]"`).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = adapter_base(model_dir)
    if base is not None:
        return _load_adapter(model_dir, base, device, dtype, allow_pickle)
    check_model_folder(model_dir, allow_pickle=allow_pickle)
    model = load_model(model_dir, allow_pickle=allow_pickle, dtype=getattr(torch, dtype)).to(device).eval()
    return model, load_tokenizer(model_dir)


def adapter_base(model_dir) -> str | None:
    """The base model a PEFT adapter folder names (`adapter_config.json`'s `base_model_name_or_path`), or `None`
    when `model_dir` is not an adapter folder (it has a `config.json`, or no `adapter_config.json`)."""
    folder = Path(model_dir)
    adapter_config = folder / "adapter_config.json"
    if (folder / "config.json").exists() or not adapter_config.is_file():
        return None
    try:
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ModelFolderError(f"{adapter_config}: not a valid adapter config ({err}).") from None
    if not isinstance(base, str) or not base:
        raise ModelFolderError(f"{adapter_config}: a LoRA adapter that names no base model (base_model_name_or_path).")
    return base


def _load_adapter(model_dir, base: str, device: str, dtype: str, allow_pickle: bool):
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelFolderError(
            f"{model_dir}: a LoRA adapter for {base}, and loading it needs peft: pip install \"smolite_hf[peft]\"; "
            f"or merge it into a full model folder where peft is installed: PeftModel.from_pretrained("
            f"AutoModelForCausalLM.from_pretrained({base!r}), {str(model_dir)!r}).merge_and_unload()"
            ".save_pretrained(DIR), then save the tokenizer there too."
        ) from None
    if Path(base).exists():
        check_model_folder(base, tokenizer=False, allow_pickle=allow_pickle)
    model = load_model(base, allow_pickle=allow_pickle, dtype=getattr(torch, dtype))
    with warnings.catch_warnings():  # peft asks the deprecated `is_gradient_checkpointing`; not the user's concern
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    folder = Path(model_dir)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    tokenizer = load_tokenizer(model_dir if (folder / "tokenizer.json").is_file() else base)
    return model.to(device).eval(), tokenizer


def fit_to_window(tokenizer, messages: list[dict], window: int, min_reply_room: int) -> list[int]:
    """Prompt ids of `messages` that leave at least `min_reply_room` of the `window` free (see the module doc)."""
    limit = window - min_reply_room
    messages = list(messages)
    while True:
        # verbose=False: no "sequence length is longer than the specified maximum" warning; this loop fits the window
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False,
                                            tokenizer_kwargs={"verbose": False})
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
    """Answer `prompt` once (streamed to stdout), or hold an interactive conversation (`chat_loop`)."""
    if prompt is not None and not prompt.strip():
        raise ValueError("the prompt is empty: give a message to answer, or no prompt to chat interactively.")
    transformers_logging.disable_progress_bar()  # "Loading weights" bars would land where the reply is streamed
    model, tokenizer = load_chat_model(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if seed is not None:
        torch.manual_seed(seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if prompt is not None:
        generate_reply(model, tokenizer, [{"role": "user", "content": prompt}], streamer=streamer, **overrides)
        return 0
    return chat_loop(lambda history: generate_reply(model, tokenizer, history, streamer=streamer, **overrides))


BANNER = "Smolite chat. /reset starts over; quit (or Ctrl-C) leaves."


def chat_loop(reply, read=input, write=print) -> int:
    """The interactive conversation: `read("you> ")` a message, `reply(history)` answers it (streaming it itself).

    `quit` / `exit`, Ctrl-C or the end of input leave; `/reset` forgets the conversation; an empty message is
    ignored. `read` and `write` stand for `input` and `print` (tests drive the loop with their own)."""
    write(BANNER)
    history: list[dict] = []
    try:
        while True:
            text = read("you> ").strip()
            if text in ("quit", "exit"):
                break
            if not text:
                continue
            if text == "/reset":
                history.clear()
                write("(the conversation starts over)")
                continue
            history.append({"role": "user", "content": text})
            write("smolite> ", end="", flush=True)
            history.append({"role": "assistant", "content": reply(history)})
    except (EOFError, KeyboardInterrupt):
        write()
    return 0


__all__ = ["BANNER", "ModelFolderError", "adapter_base", "chat", "chat_loop", "fit_to_window", "generate_reply",
           "load_chat_model", "prepare_generation"]
