#!/usr/bin/env python3
"""Check a Korean conversation corpus: format, duplicates, near-duplicates, register agreement, lengths, topic spread.

    python scripts/check_corpus.py smolite_hf/resources/korean_everyday_chat.*.jsonl
    python scripts/check_corpus.py batch/*.jsonl --min-conversations 55 --min-pairs 90   # per-topic minimums

Each line is `{"topic": ..., "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}` (a `"split"` is taken from
the file name: `*.train.jsonl` / `*.test.jsonl`). Errors (the exit code is 1 if there is any): malformed lines, turns
that do not alternate human -> gpt, empty or over-long messages, exact duplicates, near-duplicates (character 3-gram
Jaccard similarity of at least --near, on texts of 8 or more characters), a reply whose register (존댓말 / 반말, read
from the sentence endings) differs from its prompt's, a test prompt that is (nearly) a training prompt, and topics
under the minimums. Warnings: messages mixing registers, openings and sentences that recur too often, unusual
characters. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

MAX_REPLY_CHARS = 130
MAX_PROMPT_CHARS = 200
SHOW = 8  # examples shown per problem

# Register from sentence endings. Polite: 해요체 (…요), 합쇼체 (…니다, …니까, …십시오), and 죠 (지요).
POLITE_END = re.compile(r"(요|니다|니까|십시오|십시다|죠)$")
# 반말 (해체 / 해라체): a final open syllable in ㅏ ㅐ ㅑ ㅓ ㅔ ㅕ ㅘ ㅙ ㅝ ㅣ (해, 봐, 어때, 가자, 좋네, 했지, 먹을래), or one of
# the closed endings below. A sentence ending otherwise (a noun, a name) says nothing about the register.
CASUAL_VOWELS = {0, 1, 2, 4, 5, 6, 9, 10, 14, 20}
CASUAL_CLOSED = re.compile(r"(걸|군|든|잖아|음|함|셈|엉|웅|당|징|냥|당)$")


def _casual(sentence: str) -> bool:
    last = sentence[-1]
    if "\uac00" <= last <= "\ud7a3":
        index = ord(last) - 0xAC00
        if index % 28 == 0 and (index // 28) % 21 in CASUAL_VOWELS:
            return True
    return bool(CASUAL_CLOSED.search(sentence))


TRAILING = re.compile(r"[\s.!?~…ㅋㅎㅠㅜ^\"')\]]+$")
ALLOWED = re.compile(r"[\uac00-\ud7a3\u3131-\u318e A-Za-z0-9.,!?~…'\"()\-:;%/+·&*#@=\[\]<>]")


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?…])\s+|(?<=~)\s+", text.strip())
    return [TRAILING.sub("", p) for p in parts if TRAILING.sub("", p)]


def register(text: str) -> str:
    """'polite', 'casual', 'mixed' or 'unknown', from the endings of the message's sentences."""
    kinds = set()
    for sentence in sentences(text):
        if POLITE_END.search(sentence):
            kinds.add("polite")
        elif _casual(sentence):
            kinds.add("casual")
    if len(kinds) == 2:
        return "mixed"
    return kinds.pop() if kinds else "unknown"


def normalise(text: str) -> str:
    return re.sub(r"[^\uac00-\ud7a3A-Za-z0-9]", "", text)


def shingles(text: str) -> set[str]:
    norm = normalise(text)
    return {norm[i : i + 3] for i in range(len(norm) - 2)}


class Corpus:
    def __init__(self):
        self.conversations = []  # (where, topic, split, [(role, text)])
        self.errors = defaultdict(list)
        self.warnings = defaultdict(list)

    def error(self, kind: str, message: str):
        self.errors[kind].append(message)

    def warn(self, kind: str, message: str):
        self.warnings[kind].append(message)

    def read(self, path: Path):
        split = "test" if path.name.endswith(".test.jsonl") else "train"
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                where = f"{path}:{number}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    self.error("format", f"{where}: not JSON ({err.msg})")
                    continue
                turns = record.get("conversations") if isinstance(record, dict) else None
                topic = record.get("topic") if isinstance(record, dict) else None
                if not isinstance(turns, list) or not turns or not isinstance(topic, str) or not topic:
                    self.error("format", f"{where}: needs a non-empty 'topic' string and a 'conversations' list")
                    continue
                messages = []
                for i, turn in enumerate(turns):
                    role, value = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
                    expected = "human" if i % 2 == 0 else "gpt"
                    if role != expected or not isinstance(value, str):
                        self.error("format", f"{where}: turn {i} should be {expected!r} with a string value, got {turn!r:.60}")
                        break
                    messages.append((role, value))
                else:
                    if len(messages) % 2:
                        self.error("format", f"{where}: ends with a human turn (no reply)")
                        continue
                    self.conversations.append((where, topic, split, messages))

    # ------------------------------------------------------------------------------------------------ checks

    def check_messages(self):
        for where, _, _, messages in self.conversations:
            for i, (role, text) in enumerate(messages):
                limit = MAX_PROMPT_CHARS if role == "human" else MAX_REPLY_CHARS
                if not text.strip():
                    self.error("empty", f"{where}: turn {i} is empty")
                if "\n" in text:
                    self.error("newline", f"{where}: turn {i} has a newline")
                if len(text) > limit:
                    self.error("too long", f"{where}: turn {i} has {len(text)} characters (at most {limit}): {text[:40]}…")
                odd = sorted({c for c in text if not ALLOWED.match(c)})
                if odd:
                    self.warn("unusual characters", f"{where}: turn {i}: {''.join(odd)!r}")

    def check_register(self):
        self.register_counts = Counter()
        for where, _, _, messages in self.conversations:
            reply_registers = set()
            for i in range(0, len(messages), 2):
                prompt, reply = messages[i][1], messages[i + 1][1]
                p, r = register(prompt), register(reply)
                self.register_counts[(p, r)] += 1
                if r == "mixed":
                    self.warn("reply mixes registers", f"{where}: {reply}")
                if {p, r} == {"polite", "casual"}:
                    self.error("register mismatch", f"{where}: prompt {p} / reply {r}: {prompt} → {reply}")
                if r in ("polite", "casual"):
                    reply_registers.add(r)
            if len(reply_registers) == 2:
                self.warn("register changes within a conversation", f"{where}")

    def check_duplicates(self, near: float):
        by_text = defaultdict(list)
        items = []  # (role, where, split, text)
        for where, _, split, messages in self.conversations:
            for role, text in messages:
                by_text[(role, normalise(text))].append(where)
                items.append((role, where, split, text))
        for (role, norm), places in by_text.items():
            if len(places) > 1:
                kind = "duplicate prompt" if role == "human" else "duplicate reply"
                if len(norm) >= 6:
                    self.error(kind, f"{len(places)}× {norm[:40]!r}: {', '.join(places[:4])}")
                elif len(places) > 3:
                    self.warn(f"short {kind} repeated", f"{len(places)}× {norm!r}")
        for role in ("human", "gpt"):
            self._near_duplicates([it for it in items if it[0] == role], near, role)

    def _near_duplicates(self, items, near: float, role: str):
        sets = [shingles(text) for _, _, _, text in items]
        postings = defaultdict(list)
        for index, grams in enumerate(sets):
            for gram in grams:
                postings[gram].append(index)
        seen = set()
        for index, grams in enumerate(sets):
            if len(normalise(items[index][3])) < 8:
                continue
            overlap = Counter()
            for gram in grams:
                posting = postings[gram]
                if len(posting) <= 400:
                    overlap.update(j for j in posting if j > index)
            for j, shared in overlap.items():
                if shared < near * min(len(grams), len(sets[j])):
                    continue
                union = len(grams | sets[j])
                if union and len(grams & sets[j]) / union >= near and normalise(items[index][3]) != normalise(items[j][3]):
                    pair = (index, j)
                    if pair in seen:
                        continue
                    seen.add(pair)
                    a, b = items[index], items[j]
                    kind = "near-duplicate prompt" if role == "human" else "near-duplicate reply"
                    if a[2] != b[2]:
                        kind = "test prompt near a training prompt" if role == "human" else kind
                    self.error(kind, f"{a[1]} {a[3]!r} ~ {b[1]} {b[3]!r}")

    def check_leakage(self):
        train = {normalise(m[0][1]) for _, _, split, m in self.conversations if split == "train"}
        for where, _, split, messages in self.conversations:
            if split == "test" and normalise(messages[0][1]) in train:
                self.error("test prompt in training", f"{where}: {messages[0][1]}")

    def check_style(self):
        openings, sentence_counts = Counter(), Counter()
        for _, _, _, messages in self.conversations:
            for role, text in messages[1::2]:
                words = text.split()
                if words:
                    openings[re.sub(r"[.,!?~]+$", "", words[0])] += 1
                sentence_counts.update(s for s in sentences(text) if len(s) >= 6)
        replies = sum(openings.values()) or 1
        self.top_openings = openings.most_common(12)
        for word, count in self.top_openings:
            if count / replies > 0.03:
                self.warn("over-used reply opening", f"{word!r} opens {count} replies ({count / replies:.1%})")
        for sentence, count in sentence_counts.most_common():
            if count < 3:
                break
            self.warn("recurring reply sentence", f"{count}× {sentence!r}")

    def check_topics(self, min_conversations: int, min_pairs: int):
        self.topics = defaultdict(lambda: [0, 0])
        for _, topic, _, messages in self.conversations:
            self.topics[topic][0] += 1
            self.topics[topic][1] += len(messages) // 2
        for topic, (conversations, pairs) in sorted(self.topics.items()):
            if conversations < min_conversations or pairs < min_pairs:
                self.error("topic under the minimum", f"{topic}: {conversations} conversations, {pairs} pairs "
                           f"(at least {min_conversations} and {min_pairs})")

    # ------------------------------------------------------------------------------------------------ report

    def report(self) -> str:
        out = []
        convs = self.conversations
        pairs = sum(len(m) // 2 for *_, m in convs)
        turns = Counter(len(m) // 2 for *_, m in convs)
        splits = Counter(split for _, _, split, _ in convs)
        split_pairs = Counter()
        for _, _, split, m in convs:
            split_pairs[split] += len(m) // 2
        out.append(f"conversations: {len(convs)}   human→gpt pairs: {pairs}   topics: {len(self.topics)}")
        out.append("pairs per conversation: " + ", ".join(f"{k}: {v}" for k, v in sorted(turns.items()))
                   + f"   (multi-turn: {sum(v for k, v in turns.items() if k > 1) / max(len(convs), 1):.0%})")
        out.append("splits: " + ", ".join(f"{s}: {splits[s]} conversations / {split_pairs[s]} pairs" for s in sorted(splits)))
        prompt_len = [len(m[i][1]) for *_, m in convs for i in range(0, len(m), 2)]
        reply_len = [len(m[i][1]) for *_, m in convs for i in range(1, len(m), 2)]
        for name, values in (("prompt", prompt_len), ("reply", reply_len)):
            if values:
                q = statistics.quantiles(values, n=10)
                out.append(f"{name} characters: min {min(values)}, p10 {q[0]:.0f}, median {statistics.median(values):.0f}, "
                           f"p90 {q[-1]:.0f}, max {max(values)}")
        prompt_reg = Counter(p for p, _ in self.register_counts.elements())
        agree = sum(c for (p, r), c in self.register_counts.items() if p == r and p in ("polite", "casual"))
        known = sum(c for (p, r), c in self.register_counts.items() if {p, r} <= {"polite", "casual"})
        out.append("prompt register: " + ", ".join(f"{k} {v}" for k, v in prompt_reg.most_common())
                   + f"   reply matches prompt: {agree}/{known} where both are known")
        sizes = sorted(p for _, p in self.topics.values())
        if sizes:
            out.append(f"pairs per topic: min {sizes[0]}, median {statistics.median(sizes):.0f}, max {sizes[-1]}")
        out.append("top reply openings: " + ", ".join(f"{w} {c}" for w, c in self.top_openings[:8]))
        for title, problems in (("ERROR", self.errors), ("warning", self.warnings)):
            for kind, messages in sorted(problems.items()):
                out.append(f"{title}: {kind}: {len(messages)}")
                out.extend(f"    {m}" for m in messages[:SHOW])
        errors = sum(len(v) for v in self.errors.values())
        out.append(f"{errors} errors, {sum(len(v) for v in self.warnings.values())} warnings")
        return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--near", type=float, default=0.75, help="near-duplicate Jaccard threshold (default 0.75)")
    parser.add_argument("--min-conversations", type=int, default=0, help="per-topic minimum (default 0)")
    parser.add_argument("--min-pairs", type=int, default=0, help="per-topic minimum (default 0)")
    parser.add_argument("--topics", action="store_true", help="list every topic's counts")
    args = parser.parse_args(argv)
    corpus = Corpus()
    for path in args.files:
        corpus.read(path)
    corpus.check_messages()
    corpus.check_register()
    corpus.check_duplicates(args.near)
    corpus.check_leakage()
    corpus.check_style()
    corpus.check_topics(args.min_conversations, args.min_pairs)
    print(corpus.report())
    if args.topics:
        for topic, (c, p) in sorted(corpus.topics.items(), key=lambda kv: -kv[1][1]):
            print(f"  {topic}: {c} conversations, {p} pairs")
    return 1 if corpus.errors else 0


if __name__ == "__main__":
    sys.exit(main())
