"""Conversation files and training examples, by the original rules and with clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smolite_hf import SmoliteTokenizer
from smolite_hf.data import (
    Conversation,
    ConversationFormatError,
    build_examples,
    builtin_data_path,
    encode_example,
    load_conversation_dataset,
    read_conversations,
)
from smolite_hf.training import smolite_collator

from .conftest import keras_reference_file


@pytest.fixture(scope="module")
def tokenizer():
    return SmoliteTokenizer.from_sentencepiece(keras_reference_file("tokenizer.model"))


@pytest.fixture(scope="module")
def preprocessed():
    return dict(np.load(keras_reference_file("preprocessed.npz")))


def fixture_examples(tokenizer, end_tokens):
    conversations, _ = read_conversations(keras_reference_file("conversations.jsonl"))
    return build_examples(conversations, tokenizer, max_length=100, end_tokens=end_tokens)


def test_inputs_reproduce_the_original_preprocessing_row_for_row(tokenizer, preprocessed):
    examples, report = fixture_examples(tokenizer, end_tokens=2)  # the original appended <end> twice
    untrained = [11]  # the row whose prompt fills the window: the original kept it with no target, we drop it
    rows = [i for i in range(len(preprocessed["inputs"])) if i not in untrained]
    assert len(examples) == len(rows)
    for example, row in zip(examples, rows):
        padded = example["input_ids"] + [0] * (100 - len(example["input_ids"]))  # the original right-padded with <pad>
        assert padded == preprocessed["inputs"][row].tolist(), row
        assert example["line"] - 1 == preprocessed["line_index"][row]
        assert example["pair_index"] == preprocessed["pair_index"][row]
    assert report.skipped["prompt fills the window"] == 1
    assert (report.used, report.truncated) == (19, 1)


def test_labels_match_the_original_targets_apart_from_the_documented_deviations(tokenizer, preprocessed):
    examples, _ = fixture_examples(tokenizer, end_tokens=2)
    rows = [i for i in range(20) if i != 11]
    for example, row in zip(examples, rows):
        labels = example["labels"] + [-100] * (100 - len(example["labels"]))
        targets = preprocessed["targets"][row]  # targets[t] is what position t predicts; 0 (<pad>) = not trained
        prompt_length = labels.index(next(x for x in labels if x != -100))
        for t in range(99):
            if targets[t] != 0:
                assert labels[t + 1] == targets[t]
            elif labels[t + 1] != -100:
                # the one deviation: the first reply token (predicted from <sep>) is trained here, not in the original
                assert t + 1 == prompt_length, (row, t)
        if targets[99] != 0:  # a full window: the original also trained position 99 on <end>, which shifted
            assert row == 12 and targets[99] == tokenizer.eos_token_id  # labels cannot express (documented)


def hand_built_pair(tokenizer, prompt, response, max_length):
    """The preprocessing before the chat-template pipeline: `<start> {prompt} <sep>` and `{reply} <end>` encoded
    apart, the original's cleaning (newlines to spaces, ends stripped), the reply cut to fit."""
    prompt, response = (text.replace("\n", " ").strip() for text in (prompt, response))
    prompt_ids = tokenizer(f"{tokenizer.bos_token} {prompt} {tokenizer.sep_token}", add_special_tokens=False,
                           verbose=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        return None
    response_ids = tokenizer(f"{response} {tokenizer.eos_token}", add_special_tokens=False, verbose=False)["input_ids"]
    room = max_length - len(prompt_ids)
    return prompt_ids + response_ids[:room], [-100] * len(prompt_ids) + response_ids[:room], len(response_ids) > room


def chat(prompt, reply):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


@pytest.mark.parametrize("max_length", [100, 30])
def test_the_chat_template_pipeline_equals_the_hand_built_encoding(tokenizer, max_length):
    pairs = [(a[1], b[1]) for path in (keras_reference_file("conversations.jsonl"), builtin_data_path("test"))
             for c in read_conversations(path)[0] for a, b in zip(c.messages[::2], c.messages[1::2])
             if (a[0], b[0]) == ("human", "gpt")]
    assert len(pairs) > 500
    for prompt, reply in pairs:
        assert encode_example(tokenizer, chat(prompt, reply), max_length) == hand_built_pair(tokenizer, prompt, reply, max_length)


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40) | st.sampled_from(["", " ", "\n", "<sep>", "a <end> b"])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(prompt=TEXT, reply=TEXT)
def test_the_chat_template_pipeline_equals_the_hand_built_encoding_on_any_text(tokenizer, prompt, reply):
    assert encode_example(tokenizer, chat(prompt, reply), 100) == hand_built_pair(tokenizer, prompt, reply, 100)


def test_one_end_token_by_default(tokenizer):
    examples, _ = fixture_examples(tokenizer, end_tokens=1)
    for example in examples:
        if len(example["input_ids"]) < 100:  # not cut
            assert example["input_ids"][-1] == tokenizer.eos_token_id
            assert example["input_ids"][-2] != tokenizer.eos_token_id


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_pairs_roles_and_report(tmp_path, tokenizer):
    data = write_lines(tmp_path / "c.jsonl", [
        json.dumps({"conversations": [{"from": "human", "value": "안녕\n하세요"}, {"from": "gpt", "value": "네 <sep> 반가워요"}]}),
        json.dumps({"conversations": [{"from": "user", "value": "a"}, {"from": "assistant", "value": "b"}]}),
        json.dumps({"messages": [{"role": "user", "content": "오늘"}, {"role": "assistant", "content": "맑아요"}, {"role": "user", "content": "끝"}]}),
        json.dumps({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}),
        "",
    ])
    conversations, read_report = read_conversations(data)
    examples, report = build_examples(conversations, tokenizer, max_length=100)
    assert read_report.conversations == 4
    assert report.used == 2 and report.skipped == {"not a human -> gpt pair": 2, "unpaired last message": 1}
    first = examples[0]
    prompt = tokenizer("<start> 안녕 하세요 <sep>")["input_ids"]  # newline -> space
    assert first["input_ids"][: len(prompt)] == prompt and first["labels"][: len(prompt)] == [-100] * len(prompt)
    # the reply's literal <sep> is text of the reply: it is trained, and nothing is cut there
    assert first["labels"][len(prompt):] == tokenizer("네 <sep> 반가워요 <end>")["input_ids"]
    assert examples[1]["labels"][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"text": "hi"}', "line 2: missing field 'conversations'"),
        ('{"conversations": {"from": "human"}}', "line 2: field 'conversations' must be a list"),
        ('{"conversations": [{"from": "human", "value": 5}]}', r"line 2: conversations\[0\].value must be a string"),
        ('{"messages": [{"role": "user", "content": null}]}', r"line 2: messages\[0\].content must be a string"),
        ('["a"]', "line 2: expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})
    path = write_lines(tmp_path / "bad.jsonl", [good, line, good])
    with pytest.raises(ConversationFormatError, match=f"bad.jsonl, {message}"):
        read_conversations(path)
    conversations, report = read_conversations(path, skip_bad_lines=True)
    assert len(conversations) == 2 and sum(report.skipped_lines.values()) == 1


def test_invalid_utf8_and_empty_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"conversations": []}\n{"conversations": [{"from": "human", "value": "\xe9"}]}\n')
    with pytest.raises(ConversationFormatError, match="latin1.jsonl, line 2: not UTF-8"):
        read_conversations(path)
    assert read_conversations(path, skip_bad_lines=True)[1].skipped_lines == {"not UTF-8": 1}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ConversationFormatError, match="empty.jsonl: the file is empty"):
        read_conversations(empty)
    with pytest.raises(ConversationFormatError, match="no such file"):
        read_conversations(tmp_path / "absent.jsonl")


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "windows.jsonl"
    record = json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})
    path.write_bytes(b"\xef\xbb\xbf" + record.encode() + b"\r\n" + record.encode() + b"\r\n")
    assert len(read_conversations(path)[0]) == 2


def test_dataset_from_a_datasets_dataset(tokenizer):
    from datasets import Dataset

    rows = Dataset.from_dict({"messages": [[{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워"}]]})
    dataset, report = load_conversation_dataset(rows, tokenizer)
    assert report.used == 1 and dataset[0]["input_ids"] == tokenizer("<start> 안녕 <sep> 반가워 <end>")["input_ids"]
    prompt = tokenizer("<start> 안녕 <sep>")["input_ids"]
    assert dataset[0]["labels"] == [-100] * len(prompt) + tokenizer("반가워 <end>")["input_ids"]


def test_dataset_from_files_the_builtin_data_and_nothing(tmp_path, tokenizer):
    builtin, report = load_conversation_dataset(None, tokenizer)
    assert len(builtin) == report.used > 5000 and report.pairs == 5472
    assert builtin[0]["source"] == str(builtin_data_path()) and builtin[0]["line"] == 1
    bad = write_lines(tmp_path / "only_bad.jsonl", ["{oops", json.dumps({"messages": [{"role": "assistant", "content": "x"}]})])
    with pytest.raises(ConversationFormatError, match="no training example in .*only_bad.jsonl: 0 examples"):
        load_conversation_dataset([bad], tokenizer, skip_bad_lines=True)
    empty, report = load_conversation_dataset([bad], tokenizer, skip_bad_lines=True, allow_empty=True)
    assert len(empty) == 0 and report.skipped["bad line: not valid JSON"] == 1


def test_a_chat_template_without_generation_marks_is_refused(tokenizer):
    import copy

    plain = copy.copy(tokenizer)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    with pytest.raises(ValueError, match=r"does not mark assistant replies with \{% generation %\}"):
        encode_example(plain, chat("a", "b"), 100)


def test_collator_pads_dynamically_on_the_right(tokenizer):
    features = [{"input_ids": [5, 2, 9, 3, 11, 4], "labels": [-100, -100, -100, -100, 11, 4]},
                {"input_ids": [5, 2, 3, 12, 4], "labels": [-100, -100, -100, 12, 4]}]
    batch = smolite_collator(tokenizer)(features)
    assert batch["input_ids"].shape == (2, 6)  # the longest in the batch, not the window
    assert batch["input_ids"][1].tolist() == [5, 2, 3, 12, 4, tokenizer.pad_token_id]
    assert batch["labels"][1].tolist() == [-100, -100, -100, 12, 4, -100]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0]]
    assert tokenizer.padding_side == "left"  # the collator did not change the tokenizer used for generation


def test_builtin_dataset():
    splits = {split: read_conversations(builtin_data_path(split)) for split in ("train", "test")}
    conversations = [c for read, report in splits.values() for c in read]
    assert all(report.skipped_lines == {} for _, report in splits.values())
    pairs = [(a, b) for c in conversations for a, b in zip(c.messages[::2], c.messages[1::2])]
    assert len(conversations) >= 3000 and len(pairs) >= 5000  # what the data card promises
    assert sum(len(c.messages) > 2 for c in conversations) > len(conversations) / 2  # mostly multi-turn
    assert all(a[0] == "human" and b[0] == "gpt" for a, b in pairs)
    assert sum(any("\uac00" <= ch <= "\ud7a3" for ch in b[1]) for _, b in pairs) == len(pairs)  # Korean replies
    first_prompts = {split: {c.messages[0][1] for c in read} for split, (read, _) in splits.items()}
    assert not first_prompts["train"] & first_prompts["test"]  # the held-out split is held out
    topics = {json.loads(line)["topic"] for split in ("train", "test") for line in open(builtin_data_path(split), encoding="utf-8")}
    assert len(topics) >= 50
    with pytest.raises(ValueError, match="splits"):
        builtin_data_path("validation")


def test_the_corpus_checker_passes_the_builtin_data_and_catches_what_it_promises(tmp_path):
    import subprocess
    import sys

    checker = Path(__file__).resolve().parents[1] / "scripts" / "check_corpus.py"
    files = [str(builtin_data_path(split)) for split in ("train", "test")]
    done = subprocess.run([sys.executable, str(checker), *files], capture_output=True, text=True)
    assert done.returncode == 0 and "0 errors" in done.stdout, done.stdout[-2000:]
    bad = tmp_path / "bad.jsonl"
    rows = [("날씨 어때요?", "오늘은 맑아. 산책하기 좋겠다."),  # polite prompt, casual reply
            ("주말에 뭐 하지?", "친구랑 영화 보는 거 어때?"), ("주말에 뭐 하지?", "집에서 푹 쉬는 것도 좋아.")]  # duplicate
    bad.write_text("".join(json.dumps({"topic": "t", "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]},
                                      ensure_ascii=False) + "\n" for p, r in rows), encoding="utf-8")
    done = subprocess.run([sys.executable, str(checker), str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ERROR: register mismatch: 1" in done.stdout and "ERROR: duplicate prompt: 1" in done.stdout


def test_context_pairs_put_earlier_turns_before_the_pair_as_far_as_the_window_allows(tokenizer):
    messages = [("human", "안녕"), ("gpt", "반가워"), ("human", "뭐 해"), ("gpt", "쉬는 중"), ("human", "그럼 나도"), ("gpt", "같이 쉬자")]
    conversation = Conversation(messages, "mem", 1)
    alone, _ = build_examples([conversation], tokenizer)
    with_context, report = build_examples([conversation], tokenizer, context_pairs=1)
    assert [e["input_ids"] for e in alone] == [tokenizer(f"<start> {p} <sep> {r} <end>")["input_ids"]
                                               for p, r in (("안녕", "반가워"), ("뭐 해", "쉬는 중"), ("그럼 나도", "같이 쉬자"))]
    last = with_context[2]
    # one earlier pair (not two): the prompt is `<start> 뭐 해 <sep> 쉬는 중 <end> <start> 그럼 나도 <sep>`
    assert last["input_ids"] == tokenizer("<start> 뭐 해 <sep> 쉬는 중 <end> <start> 그럼 나도 <sep> 같이 쉬자 <end>")["input_ids"]
    reply = tokenizer("같이 쉬자 <end>", add_special_tokens=False)["input_ids"]
    assert [t for t in last["labels"] if t != -100] == last["input_ids"][-len(reply):]  # only the last reply is trained
    assert with_context[0]["input_ids"] == alone[0]["input_ids"] and report.used == 3
    # a window too small for the context with the whole reply: the earlier pair is dropped, as the chat window rule does
    short = len(alone[2]["input_ids"]) + 2
    assert build_examples([conversation], tokenizer, max_length=short, context_pairs=2)[0][2]["input_ids"] == alone[2]["input_ids"]
