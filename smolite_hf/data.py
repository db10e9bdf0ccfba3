"""Conversation data for Smolite: reading files, and building training examples by the original rules.

Two JSON Lines formats are read, one conversation per line:

- ShareGPT (the original's): `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}`
- messages: `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`

In the messages format `user`/`assistant` mean `human`/`gpt`. Any other role (and, in ShareGPT records, any role but
`human` and `gpt`, as in the original) is kept and never forms a training pair. A line that is not JSON, lacks the list, or holds a value that is not a string raises
`ConversationFormatError` naming the file and line; with `skip_bad_lines=True` such lines are counted and reported.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROLE_ALIASES = {"user": "human", "assistant": "gpt"}


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

    def __str__(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.skipped_lines.items()) or "none"
        return f"{self.conversations} conversations from {self.lines} lines (bad lines skipped: {skipped})"


def _parse_line(text: str, where: str) -> list[tuple[str, str]]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversationFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).") from None
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
                report.skipped_lines["not UTF-8"] += 1
                continue
            if not text.strip():
                continue
            report.lines += 1
            try:
                messages = _parse_line(text, where)
            except ConversationFormatError as err:
                if not skip_bad_lines:
                    raise
                reason = str(err).split(": ", 1)[1].split(" (")[0].split(";")[0]
                report.skipped_lines[reason] += 1
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


def conversations_from_dataset(dataset) -> list[Conversation]:
    """Conversations from a `datasets.Dataset` (or any sequence of dicts) with a `conversations` or `messages` column."""
    return [
        Conversation(_parse_record({key: row[key] for key in ("conversations", "messages") if key in row}, f"row {i}"), "dataset", i + 1)
        for i, row in enumerate(dataset)
    ]


# ----------------------------------------------------------------------------------------------- training examples


@dataclass
class BuildReport:
    """What `build_examples` did with the human -> gpt pairs it found."""

    conversations: int = 0
    pairs: int = 0  # message pairs looked at: (0, 1), (2, 3), ...
    used: int = 0
    truncated: int = 0  # used, with the reply cut to fit the window
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def __str__(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.skipped.items()) or "none"
        return (
            f"{self.used} examples from {self.pairs} message pairs in {self.conversations} conversations "
            f"({self.truncated} replies cut to fit the window; skipped: {skipped})"
        )

    def as_dict(self) -> dict:
        return {"conversations": self.conversations, "pairs": self.pairs, "used": self.used,
                "truncated": self.truncated, "skipped": dict(self.skipped)}  # fmt: skip


def clean_message(text: str) -> str:
    """The original's cleaning: newlines become spaces (nothing else), then the ends are stripped."""
    return text.replace("\n", " ").strip()


def encode_pair(tokenizer, prompt: str, response: str, max_length: int, end_tokens: int = 1):
    """`input_ids` and `labels` of one example, or `None` when the prompt alone fills the window.

    As the original: prompt ids = ids of `<start> {prompt} <sep>`, response ids = ids of `{response} <end>`, the reply
    cut to fit `max_length`. Deviations (documented): one `<end>` (the original appended two; `end_tokens=2`
    reproduces that), and the labels follow the transformers convention (the input ids on the whole reply, -100 on
    the prompt; the model shifts them), so the first reply token, which the original never trained, is trained.
    Prompt and reply are encoded separately, so a message containing the text `<sep>` is not split there.
    Returns `(input_ids, labels, truncated)`.
    """
    end = " ".join([tokenizer.eos_token] * end_tokens)
    prompt_ids = tokenizer(f"{tokenizer.bos_token} {clean_message(prompt)} {tokenizer.sep_token}", add_special_tokens=False, verbose=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        return None
    response_ids = tokenizer(f"{clean_message(response)} {end}", add_special_tokens=False, verbose=False)["input_ids"]
    room = max_length - len(prompt_ids)
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids, truncated


def build_examples(conversations: list[Conversation], tokenizer, max_length: int = 100, end_tokens: int = 1):
    """Training examples by the original rules; returns `(examples, BuildReport)`.

    Messages are taken two at a time, (0, 1), (2, 3), ...; a pair is an example only when it is exactly human then
    gpt; each pair stands alone (earlier turns are not context). A trailing unpaired message is ignored. A pair whose
    prompt alone fills the window has nothing to train and is dropped (the original kept it with every target
    masked). Each example carries `source` and `line` so that it can be traced back.
    """
    report, examples = BuildReport(conversations=len(conversations)), []
    for conversation in conversations:
        messages = conversation.messages
        for pair_index in range(0, len(messages), 2):
            if pair_index + 1 == len(messages):
                report.skipped["unpaired last message"] += 1
                continue
            report.pairs += 1
            (first_role, prompt), (second_role, response) = messages[pair_index], messages[pair_index + 1]
            if (first_role, second_role) != ("human", "gpt"):
                report.skipped["not a human -> gpt pair"] += 1
                continue
            encoded = encode_pair(tokenizer, prompt, response, max_length, end_tokens)
            if encoded is None:
                report.skipped["prompt fills the window"] += 1
                continue
            input_ids, labels, truncated = encoded
            report.used += 1
            report.truncated += truncated
            examples.append({"input_ids": input_ids, "labels": labels, "source": conversation.source,
                             "line": conversation.line, "pair_index": pair_index})  # fmt: skip
    return examples, report


def load_conversation_dataset(data, tokenizer, max_length: int = 100, skip_bad_lines: bool = False):
    """A `datasets.Dataset` of training examples (`input_ids`, `labels`, `source`, `line`, `pair_index`).

    `data` is a conversation file, a list of files, or a `datasets.Dataset` with a `conversations` or `messages`
    column. Returns `(dataset, BuildReport)`; the report also counts bad lines skipped with `skip_bad_lines`.
    """
    from datasets import Dataset

    if isinstance(data, (str, os.PathLike)) or (
        isinstance(data, (list, tuple)) and all(isinstance(item, (str, os.PathLike)) for item in data)
    ):
        conversations, read_reports = read_conversation_files(data, skip_bad_lines=skip_bad_lines)
        bad_lines = sum((r.skipped_lines for r in read_reports), Counter())
    else:
        conversations, bad_lines = conversations_from_dataset(data), Counter()
    examples, report = build_examples(conversations, tokenizer, max_length=max_length)
    report.skipped.update({f"bad line: {reason}": count for reason, count in bad_lines.items()})
    if not examples:
        raise ConversationFormatError(f"no training example in {data!r}: {report}")
    columns = {key: [example[key] for example in examples] for key in examples[0]}
    return Dataset.from_dict(columns), report


__all__ = [
    "BuildReport",
    "Conversation",
    "ConversationFormatError",
    "ReadReport",
    "build_examples",
    "clean_message",
    "conversations_from_dataset",
    "encode_pair",
    "load_conversation_dataset",
    "read_conversation_files",
    "read_conversations",
    "read_texts",
]
