"""Conversation data for Smolite: reading files, and turning conversations into training examples.

```python
from smolite_hf.data import load_conversation_dataset
dataset, report = load_conversation_dataset("chats.jsonl", tokenizer)   # or a datasets.Dataset; None: the built-in data
```

Two JSON Lines formats are read, one conversation per line:

- ShareGPT (the original's): `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}`
- messages: `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`

In the messages format `user`/`assistant` mean `human`/`gpt`. Any other role (and, in ShareGPT records, any role but
`human` and `gpt`, as in the original) is kept and never forms a training pair. A line that is not JSON, lacks the list, or holds a value that is not a string raises
`ConversationFormatError` naming the file and line; with `skip_bad_lines=True` such lines are counted and reported.

Training examples are the tokenizer's chat template rendering of each human -> gpt pair (`<start> {prompt} <sep>
{reply} <end>`), with the reply found by `return_assistant_tokens_mask` (see `build_examples`).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .configuration_smolite import SmoliteConfig

# The built-in corpus, with its held-out split fixed in the data (see resources/README.md).
BUILTIN_SPLITS = {"train": "korean_everyday_chat.train.jsonl", "test": "korean_everyday_chat.test.jsonl"}
ROLE_ALIASES = {"user": "human", "assistant": "gpt"}
CHAT_ROLES = {"human": "user", "gpt": "assistant"}  # conversation roles -> chat-template roles


def builtin_data_path(split: str = "train") -> Path:
    """A split (`"train"` or `"test"`, the fixed held-out part) of the Korean everyday-conversation corpus shipped
    with the package (CC0; see `smolite_hf/resources/README.md`)."""
    if split not in BUILTIN_SPLITS:
        raise ValueError(f"the built-in data has the splits {sorted(BUILTIN_SPLITS)}, not {split!r}.")
    return Path(str(resources.files("smolite_hf") / "resources" / BUILTIN_SPLITS[split]))


class ConversationFormatError(ValueError):
    """A conversation file has a line that is not a conversation; the message names the file and line."""


@dataclass
class Conversation:
    """One conversation: `(role, text)` messages in order, and where it came from."""

    messages: list[tuple[str, str]]
    source: str
    line: int  # 1-based line number in `source`


@dataclass
class ReadReport:
    lines: int = 0
    conversations: int = 0
    skipped_lines: Counter = field(default_factory=Counter)  # reason -> count
    first_skipped: list[str] = field(default_factory=list)  # "file, line N: the error" of the first few skipped

    FIRST_SKIPPED = 3  # how many skipped lines are named

    def __str__(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.skipped_lines.items()) or "none"
        return f"{self.conversations} conversations from {self.lines} lines (bad lines skipped: {skipped})"

    def skip(self, reason: str, error: str) -> None:
        """Count a skipped line under `reason`; the first few are kept by name (`error` names file and line)."""
        self.skipped_lines[reason] += 1
        if len(self.first_skipped) < self.FIRST_SKIPPED:
            self.first_skipped.append(error)

    def skipped_summary(self, path) -> str | None:
        """One line: how many lines of `path` were skipped, and the first few by line and error; `None` if none."""
        total = sum(self.skipped_lines.values())
        if not total:
            return None
        more = f" (first {len(self.first_skipped)})" if total > len(self.first_skipped) else ""
        named = "; ".join(error.rstrip(".") for error in self.first_skipped)
        return f"skipped {total} bad line{'s' * (total > 1)} of {path}{more}: {named}"

    def as_dict(self) -> dict:
        return {"lines": self.lines, "skipped_lines": dict(self.skipped_lines)}


def _parse_line(text: str, where: str) -> list[tuple[str, str]]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        # json's messages for a bad character end in " at" ("Invalid control character at"): one "at" before the column
        reason = err.msg.removesuffix(" at")
        raise ConversationFormatError(f"{where}: not valid JSON ({reason} at column {err.colno}).") from None
    return _parse_record(record, where)


def _parse_record(record, where: str) -> list[tuple[str, str]]:
    if not isinstance(record, dict):
        raise ConversationFormatError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "conversations" in record:
        key, role_key, text_key = "conversations", "from", "value"
    elif "messages" in record:
        key, role_key, text_key = "messages", "role", "content"
    else:
        raise ConversationFormatError(
            f"{where}: missing field 'conversations' (ShareGPT format) or 'messages' (role/content format); "
            f"found fields {sorted(record)}."
        )
    items = record[key]
    if not isinstance(items, list):
        raise ConversationFormatError(f"{where}: field '{key}' must be a list, got {type(items).__name__}.")
    messages = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConversationFormatError(f"{where}: {key}[{index}] must be an object, got {type(item).__name__}.")
        role, value = item.get(role_key), item.get(text_key)
        if not isinstance(role, str):
            raise ConversationFormatError(f"{where}: {key}[{index}].{role_key} must be a string, got {role!r}.")
        if not isinstance(value, str):
            raise ConversationFormatError(
                f"{where}: {key}[{index}].{text_key} must be a string, got {type(value).__name__} ({value!r:.40})."
            )
        messages.append((ROLE_ALIASES.get(role, role) if key == "messages" else role, value))
    return messages


def read_conversations(path: str | os.PathLike, skip_bad_lines: bool = False) -> tuple[list[Conversation], ReadReport]:
    """Read a JSON Lines conversation file. Blank lines are ignored; an empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise ConversationFormatError(f"{path}: no such file.")
    report, conversations = ReadReport(), []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                error = ConversationFormatError(f"{where}: not UTF-8 text (byte {err.start}).")
                if not skip_bad_lines:
                    raise error from None
                report.lines += 1
                report.skip("not UTF-8", str(error))
                continue
            if not text.strip():
                continue
            report.lines += 1
            try:
                messages = _parse_line(text, where)
            except ConversationFormatError as err:
                if not skip_bad_lines:
                    raise
                reason = str(err).split(": ", 1)[1].split(" (")[0].split(";")[0].rstrip(".")
                report.skip(reason, str(err))
                continue
            conversations.append(Conversation(messages, str(path), number))
    if report.lines == 0:
        raise ConversationFormatError(f"{path}: the file is empty (expected one JSON conversation per line).")
    report.conversations = len(conversations)
    return conversations, report


def read_conversation_files(paths, skip_bad_lines: bool = False) -> tuple[list[Conversation], list[ReadReport]]:
    """`read_conversations` over one path or several; returns all conversations and one report per file."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    conversations, reports = [], []
    for path in paths:
        read, report = read_conversations(path, skip_bad_lines=skip_bad_lines)
        conversations += read
        reports.append(report)
    return conversations, reports


def read_texts(paths, skip_bad_lines: bool = False):
    """Every message text of conversation files (`.jsonl`/`.json`), or every non-blank line of text files."""
    for path in map(Path, paths):
        if path.suffix in (".jsonl", ".json"):
            for conversation in read_conversations(path, skip_bad_lines=skip_bad_lines)[0]:
                yield from (text for _, text in conversation.messages)
        else:
            if not path.is_file():
                raise ConversationFormatError(f"{path}: no such file.")
            with open(path, encoding="utf-8") as f:
                yield from (line.rstrip("\n") for line in f if line.strip())


def _is_files(data) -> bool:
    return isinstance(data, (str, os.PathLike)) or (
        isinstance(data, (list, tuple)) and all(isinstance(item, (str, os.PathLike)) for item in data)
    )


def read_conversation_data(data=None, skip_bad_lines: bool = False) -> tuple[list[Conversation], dict[str, ReadReport]]:
    """The conversations of `data`, and a read report per file (`{}` for a dataset).

    `data`: a conversation file, a list of files, `None` (the built-in training split), a `datasets.Dataset` (or any sequence of
    dicts) with a `conversations` or `messages` column, or a list of `Conversation`s (returned as they are).
    """
    data = builtin_data_path("train") if data is None else data
    if _is_files(data):
        paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        conversations, reports = read_conversation_files(paths, skip_bad_lines=skip_bad_lines)
        return conversations, {str(path): report for path, report in zip(paths, reports)}
    if all(isinstance(item, Conversation) for item in data):
        return list(data), {}
    return conversations_from_dataset(data), {}


def conversations_from_dataset(dataset) -> list[Conversation]:
    """Conversations from a `datasets.Dataset` (or any sequence of dicts) with a `conversations` or `messages` column."""
    return [
        Conversation(_parse_record({key: row[key] for key in ("conversations", "messages") if key in row}, f"row {i}"), "dataset", i + 1)
        for i, row in enumerate(dataset)
    ]


def split_conversations(conversations: list[Conversation], eval_fraction: float, seed: int):
    """A reproducible train/eval split by conversation (turns of one conversation never straddle the split)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(conversations) * eval_fraction)
    if eval_fraction and n_eval == 0 and len(conversations) > 1:
        n_eval = 1
    eval_ids = set(order[:n_eval])
    train_set = [c for i, c in enumerate(conversations) if i not in eval_ids]
    eval_set = [c for i, c in enumerate(conversations) if i in eval_ids]
    return train_set, eval_set


# ----------------------------------------------------------------------------------------------- training examples


@dataclass
class BuildReport:
    """What `build_examples` did with the human -> gpt pairs it found."""

    conversations: int = 0
    pairs: int = 0  # message pairs looked at: (0, 1), (2, 3), ...
    used: int = 0
    truncated: int = 0  # used, with the reply cut to fit the window
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    bad_lines: list[str] = field(default_factory=list)  # per file with skipped lines: `ReadReport.skipped_summary`

    def __str__(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.skipped.items()) or "none"
        return (
            f"{self.used} examples from {self.pairs} message pairs in {self.conversations} conversations "
            f"({self.truncated} replies cut to fit the window; skipped: {skipped})"
        )

    def as_dict(self) -> dict:
        return {"conversations": self.conversations, "pairs": self.pairs, "used": self.used,
                "truncated": self.truncated, "skipped": dict(self.skipped)}  # fmt: skip


def pair_messages(messages: list[tuple[str, str]], pair_index: int, context_pairs: int = 0) -> list[dict]:
    """The chat messages of the example for the human -> gpt pair at `pair_index`, preceded by up to `context_pairs`
    earlier pairs of the conversation as context (0: the pair alone, as the original). `encode_example` trains only
    the last reply of what is returned."""
    start = max(0, pair_index - 2 * context_pairs)
    return [{"role": CHAT_ROLES[role], "content": text} for role, text in messages[start : pair_index + 2]]


def _with_context(tokenizer, messages, pair_index: int, context_pairs: int, max_length: int, end_tokens: int):
    """`encode_example` of the pair with as many of its `context_pairs` earlier pairs as leave the whole reply in the
    window (whole pairs are dropped, oldest first, as the chat window rule does); the pair alone when none fits."""
    for context in range(context_pairs, 0, -1):
        if not all(messages[i][0] == ("human", "gpt")[i % 2] for i in range(pair_index - 2 * context, pair_index)):
            continue  # context only from well-formed human -> gpt pairs
        encoded = encode_example(tokenizer, pair_messages(messages, pair_index, context), max_length, end_tokens)
        if encoded is not None and not encoded[2]:
            return encoded
    return encode_example(tokenizer, pair_messages(messages, pair_index), max_length, end_tokens)


def encode_example(tokenizer, messages: list[dict], max_length: int, end_tokens: int = 1):
    """`(input_ids, labels, truncated)` of chat `messages` ending with an assistant reply, or `None` when the prompt
    alone fills the window.

    The tokenizer's chat template renders the messages (Smolite's: `<start> {prompt} <sep> {reply} <end>`, newlines
    as spaces); `return_assistant_tokens_mask` finds the last reply, which is the target (labels = its ids, the
    transformers convention: the model shifts them) while everything before it is the prompt (labels -100). The reply
    is cut to fit `max_length`. `end_tokens=2` appends a second `<end>`, as the original did. A message that contains
    the text `<sep>` is not split there: the reply is where the template put it.
    """
    rendered = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True,
                                             tokenizer_kwargs={"verbose": False})
    input_ids, mask = list(rendered["input_ids"]), list(rendered["assistant_masks"])
    if 1 not in mask:
        raise ValueError(
            f"{type(tokenizer).__name__}'s chat template does not mark assistant replies with {{% generation %}}; "
            "training examples need it to tell the reply from the prompt (Smolite's template has it)."
        )
    reply_end = len(mask) - mask[::-1].index(1)
    reply_start = reply_end
    while reply_start > 0 and mask[reply_start - 1]:
        reply_start -= 1
    prompt_ids = input_ids[:reply_start]
    if len(prompt_ids) >= max_length:
        return None
    extra_end = tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"] * (end_tokens - 1)
    response_ids = input_ids[reply_start:reply_end] + extra_end
    room = max_length - len(prompt_ids)
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids, truncated


def build_examples(conversations: list[Conversation], tokenizer, max_length: int | None = None, end_tokens: int = 1,
                   context_pairs: int = 0):
    """Training examples by the original rules; returns `(examples, BuildReport)`.

    Messages are taken two at a time, (0, 1), (2, 3), ...; a pair is an example only when it is exactly human then
    gpt; each pair stands alone (`pair_messages`) unless `context_pairs` > 0, which puts up to that many earlier pairs
    of the conversation before it as context (only the last reply is trained; earlier pairs are dropped, oldest
    first, until the whole reply fits the window). A trailing unpaired message is ignored. `max_length` is the window
    (default: `SmoliteConfig`'s `max_position_embeddings`); a pair whose prompt alone fills it has nothing to train
    and is dropped (the original kept it with every target masked). Each example carries `source`, `line` and
    `pair_index` so that it can be traced back. Encoding: `encode_example`.
    """
    max_length = max_length or SmoliteConfig().max_position_embeddings
    report, examples = BuildReport(conversations=len(conversations)), []
    for conversation in conversations:
        messages = conversation.messages
        for pair_index in range(0, len(messages), 2):
            if pair_index + 1 == len(messages):
                report.skipped["unpaired last message"] += 1
                continue
            report.pairs += 1
            if (messages[pair_index][0], messages[pair_index + 1][0]) != ("human", "gpt"):
                report.skipped["not a human -> gpt pair"] += 1
                continue
            encoded = _with_context(tokenizer, messages, pair_index, context_pairs, max_length, end_tokens)
            if encoded is None:
                report.skipped["prompt fills the window"] += 1
                continue
            input_ids, labels, truncated = encoded
            report.used += 1
            report.truncated += truncated
            examples.append({"input_ids": input_ids, "labels": labels, "source": conversation.source,
                             "line": conversation.line, "pair_index": pair_index})  # fmt: skip
    return examples, report


def _describe(data) -> str:
    if data is None:
        return str(builtin_data_path("train"))
    if _is_files(data):
        return str(data) if isinstance(data, (str, os.PathLike)) else ", ".join(map(str, data))
    sources = sorted({item.source for item in data if isinstance(item, Conversation)})
    return ", ".join(sources) if sources else "the dataset"


def load_conversation_dataset(data, tokenizer, max_length: int | None = None, skip_bad_lines: bool = False,
                              allow_empty: bool = False, context_pairs: int = 0):
    """A `datasets.Dataset` of training examples (`input_ids`, `labels`, `source`, `line`, `pair_index`).

    The one way from data to examples (`smolite train` and `smolite evaluate` use it). `data`: a conversation file, a
    list of files, `None` (the built-in training split), a `datasets.Dataset` with a `conversations` or `messages` column, or a
    list of `Conversation`s. `max_length`: the window (default: `SmoliteConfig`'s). Returns `(dataset, BuildReport)`;
    the report also counts bad lines skipped with `skip_bad_lines`. No example is an error unless `allow_empty`.
    """
    from datasets import Dataset

    conversations, read_reports = read_conversation_data(data, skip_bad_lines=skip_bad_lines)
    examples, report = build_examples(conversations, tokenizer, max_length=max_length, context_pairs=context_pairs)
    bad_lines = sum((r.skipped_lines for r in read_reports.values()), Counter())
    report.skipped.update({f"bad line: {reason}": count for reason, count in bad_lines.items()})
    report.bad_lines = [line for path, r in read_reports.items() if (line := r.skipped_summary(path))]
    if not examples and not allow_empty:
        raise ConversationFormatError(f"no training example in {_describe(data)}: {report}")
    columns = ("input_ids", "labels", "source", "line", "pair_index")
    return Dataset.from_dict({key: [example[key] for example in examples] for key in columns}), report


__all__ = [
    "BUILTIN_SPLITS",
    "BuildReport",
    "Conversation",
    "ConversationFormatError",
    "ReadReport",
    "build_examples",
    "builtin_data_path",
    "conversations_from_dataset",
    "encode_example",
    "load_conversation_dataset",
    "pair_messages",
    "read_conversation_data",
    "read_conversation_files",
    "read_conversations",
    "read_texts",
    "split_conversations",
]
