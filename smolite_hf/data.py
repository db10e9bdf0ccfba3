"""Conversation data for Smolite: reading files, and building training examples by the original rules.

Two JSON Lines formats are read, one conversation per line:

- ShareGPT (the original's): `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}`
- messages: `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`

Roles are normalised to `human`/`gpt` (`user` -> `human`, `assistant` -> `gpt`; other roles are kept and never form
a pair, as in the original). A line that is not JSON, lacks the list, or holds a value that is not a string raises
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
        messages.append((ROLE_ALIASES.get(role, role), value))
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


__all__ = ["Conversation", "ConversationFormatError", "ReadReport", "read_conversations", "read_texts"]
