"""Decoding with generate(): greedy parity with the original loop, the window rule, and `smolite chat`."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from smolite_hf.chat import fit_to_window, generate_reply

from .conftest import keras_reference_file


def test_greedy_generate_reproduces_the_original_loop(converted_model):
    generation = json.loads(keras_reference_file("generation.json").read_text(encoding="utf-8"))
    ids = generation["special_ids"]
    for case in generation["prompts"]:
        original = case["generate"]
        steps = original["first_windowed_step"] or original["num_steps"]  # later steps slide the original's window
        prompt = torch.tensor([case["prompt_ids"]])
        with torch.no_grad():
            output = converted_model.generate(
                prompt,
                do_sample=False,
                max_new_tokens=steps,
                sequence_bias=[[[ids["end_id"]], -5.0], [[ids["pad_id"]], -10.0]],  # the original's adjustments
                repetition_penalty=1.0,
                eos_token_id=ids["end_id"],
                pad_token_id=ids["pad_id"],
            )
        assert output[0, prompt.shape[1] :].tolist() == original["new_ids"][:steps]


@pytest.fixture(scope="module")
def tokenizer(converted_dir):
    return AutoTokenizer.from_pretrained(converted_dir)


def test_window_rule_keeps_the_start_marker_and_the_most_recent_tokens(tokenizer):
    long_message = " ".join(["오늘 날씨가 정말 좋네요"] * 40)
    ids = fit_to_window(tokenizer, [{"role": "user", "content": long_message}], window=100, min_reply_room=20)
    assert len(ids) == 80
    assert ids[:2] == tokenizer("<start>")["input_ids"]  # "▁", "<start>"
    full = tokenizer.apply_chat_template([{"role": "user", "content": long_message}], add_generation_prompt=True, return_dict=False)
    assert ids[2:] == full[-78:] and ids[-1] == tokenizer.sep_token_id


def test_window_rule_drops_the_oldest_turns_first(tokenizer):
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"질문 {i} " + "안녕하세요 " * 3}, {"role": "assistant", "content": "네 " * 5}]
    turns.append({"role": "user", "content": "마지막 질문"})
    ids = fit_to_window(tokenizer, turns, window=100, min_reply_room=20)
    kept = tokenizer.decode(ids)
    last_turn = tokenizer.apply_chat_template([turns[-1]], add_generation_prompt=True, return_dict=False)
    assert len(ids) <= 80 and ids[-(len(last_turn) - 1) :] == last_turn[1:] and kept.startswith("<start>")
    assert "질문 0" not in kept and "질문 5" in kept


def test_a_reply_never_runs_past_the_window(converted_model, tokenizer):
    long_message = " ".join(["오늘 날씨가 정말 좋네요"] * 40)
    calls = []
    original_generate = converted_model.generate

    def recording_generate(input_ids, **kwargs):
        output = original_generate(input_ids, **kwargs)
        calls.append((input_ids.shape[1], output.shape[1]))
        return output

    converted_model.generate = recording_generate
    try:
        generate_reply(converted_model, tokenizer, [{"role": "user", "content": long_message}], do_sample=False, max_new_tokens=500)
    finally:
        del converted_model.generate
    (prompt_length, total_length), = calls
    assert prompt_length == 80 and total_length <= 100


def run(*args):
    return subprocess.run([sys.executable, "-m", "smolite_hf", *args], capture_output=True, text=True, timeout=300)


def test_chat_prompt_end_to_end(converted_dir):
    done = run("chat", str(converted_dir), "--prompt", "안녕하세요", "--greedy", "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()  # the streamed reply
    again = run("chat", str(converted_dir), "--prompt", "안녕하세요", "--greedy", "--max-new-tokens", "8")
    assert again.stdout == done.stdout  # greedy is deterministic
    bf16 = run("chat", str(converted_dir), "--prompt", "안녕하세요", "--greedy", "--max-new-tokens", "8", "--dtype", "bfloat16", "--device", "cpu")
    assert bf16.returncode == 0 and bf16.stdout.strip(), bf16.stderr[-2000:]
    seeded = [run("chat", str(converted_dir), "--prompt", "안녕하세요", "--seed", "3", "--max-new-tokens", "8").stdout for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_interactive_chat_ends_on_quit_and_on_end_of_input(converted_dir):
    session = subprocess.run([sys.executable, "-m", "smolite_hf", "chat", str(converted_dir), "--greedy", "--max-new-tokens", "4"],
                             input="안녕\n날씨 어때?\nquit\n", capture_output=True, text=True, timeout=300)
    assert session.returncode == 0 and session.stdout.count("smolite> ") == 2
    eof = subprocess.run([sys.executable, "-m", "smolite_hf", "chat", str(converted_dir), "--max-new-tokens", "4"],
                         input="안녕\n", capture_output=True, text=True, timeout=300)
    assert eof.returncode == 0 and "Traceback" not in eof.stderr


@pytest.mark.parametrize("missing", [None, "tokenizer.json", "model.safetensors"])
def test_missing_or_incomplete_folder(converted_dir, tmp_path, missing):
    import shutil

    folder = tmp_path / "model"
    if missing:
        shutil.copytree(converted_dir, folder)
        (folder / missing).unlink()
    done = run("chat", str(folder), "--prompt", "x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (f"{folder / missing}: missing" if missing else "no such model folder") in done.stderr
