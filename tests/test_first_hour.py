"""What a new user hits in the first hour (issue 16): missing extras and devices, a quiet chat with /reset, a
training run that says what it does, clear JSONL errors, LoRA folders in `smolite chat`."""

import json
import re
import subprocess
import sys

import pytest
import torch

from smolite_hf.chat import BANNER, chat_loop, load_chat_model
from smolite_hf.cli import main
from smolite_hf.data import ConversationFormatError, read_conversations
from smolite_hf.training import train

from .conftest import keras_reference_file

TINY = dict(size="tiny", vocab_size=420, batch_size=4, eval_fraction=0.2, disable_tqdm=True, logging_steps=50)
TINY_FLAGS = ["--size", "tiny", "--vocab-size", "420", "--batch-size", "4", "--eval-fraction", "0.2"]


def smolite(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "smolite_hf", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


# ------------------------------------------------------------------------------------ missing extras and devices


def test_convert_tokenizer_without_protobuf_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "google.protobuf", None)  # import google.protobuf now raises ImportError
    code = main(["convert", "--keras-weights", str(keras_reference_file("smolite_tiny.weights.h5")), "--output-dir",
                 str(tmp_path / "out"), "--tokenizer", str(keras_reference_file("tokenizer.model"))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert 'pip install "smolite_hf[sentencepiece]"' in err and "protobuf" in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_train_lora_without_peft_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "peft", None)
    code = main(["train", "--output-dir", str(tmp_path / "run"), "--lora", "--from-pretrained", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert 'pip install "smolite_hf[peft]"' in err and "--lora" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize("command", ["chat", "serve"])
def test_device_cuda_on_a_cpu_only_torch_names_the_devices(capsys, tmp_path, command):
    code = main([command, str(tmp_path), "--device", "cuda", *(["--prompt", "x"] if command == "chat" else [])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--device cuda" in err and "devices here: cpu" in err


def test_a_device_that_is_no_device_name(capsys, tmp_path):
    assert main(["chat", str(tmp_path), "--device", "gpu0", "--prompt", "x"]) == 2
    assert "--device gpu0: not a device name; devices here: cpu" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------- chat


def test_chat_loop_resets_ignores_empty_messages_and_lists_its_commands():
    lines = iter(["안녕", "", "   ", "날씨 어때?", "/reset", "뭐해?", "quit", "never read"])
    seen, written = [], []
    code = chat_loop(lambda history: seen.append([m["content"] for m in history]) or "응",
                     read=lambda _prompt: next(lines), write=lambda *a, **k: written.append(" ".join(map(str, a))))
    assert code == 0
    assert seen == [["안녕"], ["안녕", "응", "날씨 어때?"], ["뭐해?"]]  # empty ignored; /reset forgot the first two
    assert written[0] == BANNER and "/reset" in BANNER and "quit" in BANNER and "\n" not in BANNER
    assert next(lines) == "never read"  # quit left the loop


def test_an_empty_prompt_is_refused(converted_dir, capsys):
    assert main(["chat", str(converted_dir), "--prompt", ""]) == 2
    err = capsys.readouterr().err
    assert "--prompt is empty" in err and err.count("\n") == 1


def test_a_long_conversation_has_no_progress_bar_and_no_length_warning(converted_dir):
    long = "오늘 날씨가 정말 좋네요 우리 같이 공원에 산책하러 갈까요 아니면 영화를 볼까요"
    session = smolite("chat", str(converted_dir), "--greedy", "--max-new-tokens", "4",
                      input="\n".join([long] * 5 + ["", "/reset", long, "quit"]) + "\n")
    assert session.returncode == 0, session.stderr[-2000:]
    assert session.stdout.count("smolite> ") == 6 and "starts over" in session.stdout
    output = session.stdout + session.stderr
    assert "longer than the specified maximum sequence length" not in output
    assert "Loading weights" not in output and "it/s" not in output


# --------------------------------------------------------------------------------------------------------- JSONL


def test_a_control_character_error_says_at_once(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a\x01b"}]}\n', encoding="utf-8")
    with pytest.raises(ConversationFormatError) as err:
        read_conversations(path)
    assert "line 1: not valid JSON (Invalid control character at column" in str(err.value)
    assert "at at" not in str(err.value)


# ------------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("command", ["train", "train-tokenizer"])
def test_a_vocabulary_the_data_cannot_support_names_the_option_and_the_largest_size(capsys, tmp_path, command):
    data = keras_reference_file("conversations.jsonl")
    code = main([command, "--data", str(data), "--output-dir", str(tmp_path / "out"), "--vocab-size", "100000",
                 *(["--size", "tiny"] if command == "train" else [])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    largest = int(re.search(r"at most (\d+) pieces", err).group(1))
    assert "--vocab-size 100000 is more than the training text supports" in err
    assert f"--vocab-size {largest} or less" in err and "vocab_size=" not in err
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    # the size it names is one that trains
    assert main(["train-tokenizer", "--data", str(data), "--output-dir", str(tmp_path / "tok"),
                 "--vocab-size", str(largest)]) == 0
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"].__len__() == largest


def test_a_vocabulary_too_small_for_the_characters_names_the_option_and_the_smallest_size(capsys, tmp_path):
    code = main(["train-tokenizer", "--data", str(keras_reference_file("conversations.jsonl")), "--output-dir",
                 str(tmp_path / "tok"), "--vocab-size", "40"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"--vocab-size 40 is too small .* ask for --vocab-size \d+ or more\.", err), err


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    good = keras_reference_file("conversations.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("data") / "bad.jsonl"
    lines = good[:8] + ["{oops", '{"messages": "x"}', '{"chats": []}', "[1]"] + good[8:]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_training_reports_its_data_skipped_lines_and_resumes_out_loud(tmp_path, bad_data):
    run = tmp_path / "run"
    first = smolite("train", "--data", str(bad_data), "--output-dir", str(run), *TINY_FLAGS, "--max-steps", "1",
                    "--save-steps", "1", "--skip-bad-lines")
    assert first.returncode == 0, first.stderr[-3000:]
    skipped = f"smolite train: skipped 4 bad lines of {bad_data} (first 3): {bad_data}, line 9: not valid JSON"
    assert skipped in first.stdout
    assert "line 10: field 'messages' must be a list" in first.stdout and "line 11" in first.stdout
    assert "line 12" not in first.stdout
    report = json.loads((run / "training_report.json").read_text(encoding="utf-8"))["data"]["train"]
    used = f"smolite train: training data: {report['used']} examples from {report['pairs']} message pairs"
    assert used in first.stdout
    assert "smolite train: evaluation data: " in first.stdout
    from smolite_hf.training import cpu_computes_bfloat16

    native = cpu_computes_bfloat16()  # the default precision, and why, as the run starts and in the report
    precision = (f"bfloat16 autocast with float32 weights and optimizer, which this CPU computes natively ({native})"
                 if native else "float32")
    assert f"smolite train: precision: {precision}" in first.stdout, first.stdout
    saved = json.loads((run / "training_report.json").read_text(encoding="utf-8"))["precision"]
    assert saved == ("bfloat16 autocast" if native else "float32")

    resumed = smolite("train", "--data", str(bad_data), "--output-dir", str(run), *TINY_FLAGS, "--max-steps", "3",
                      "--save-steps", "1", "--skip-bad-lines", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"smolite train: resuming from {run / 'checkpoint-1'} (step 1 of 3)" in resumed.stdout
    assert "missing keys" not in resumed.stdout + resumed.stderr  # the tied head is no missing key
    assert (run / "checkpoint-3").is_dir()

    finished = smolite("train", "--data", str(bad_data), "--output-dir", str(run), *TINY_FLAGS, "--max-steps", "3",
                       "--save-steps", "1", "--skip-bad-lines", "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "nothing left to do" in finished.stdout and "checkpoint-3" in finished.stdout
    assert "train_loss" not in finished.stdout + finished.stderr and "Trained on" not in finished.stdout

    evaluated = smolite("evaluate", str(run), "--data", str(bad_data), "--skip-bad-lines")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "skipped: none" not in evaluated.stdout and "4 bad line" not in evaluated.stdout
    assert "bad line: not valid JSON" in evaluated.stdout
    assert f"skipped 4 bad lines of {bad_data} (first 3): {bad_data}, line 9" in evaluated.stderr


def test_ctrl_c_during_training_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import smolite_hf.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(smolite_hf.training, "train_with_arguments", interrupted)
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "--resume" in err and str(tmp_path / "run") in err


# ---------------------------------------------------------------------------------------------------- LoRA folders


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    data = keras_reference_file("conversations.jsonl")
    root = tmp_path_factory.mktemp("lora")
    base = train(root / "base", data, max_steps=2, **TINY).output_dir
    return train(root / "lora", data, from_pretrained=base, lora=True, lora_r=4, max_steps=3, learning_rate=1e-2,
                 **TINY).output_dir


def test_chat_loads_a_lora_folder_as_base_plus_adapter(lora_dir):
    from peft import PeftModel

    from smolite_hf import SmoliteForCausalLM

    base_dir = json.loads((lora_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model, tokenizer = load_chat_model(lora_dir, device="cpu")
    ids = torch.tensor([[5, 2, 40, 41, 5, 3, 60, 61]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(SmoliteForCausalLM.from_pretrained(base_dir), lora_dir).eval()(ids).logits
        base = SmoliteForCausalLM.from_pretrained(base_dir).eval()(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, base, atol=1e-4)  # the adapter is in
    done = smolite("chat", str(lora_dir), "--prompt", "안녕", "--greedy", "--max-new-tokens", "4")
    assert done.returncode == 0 and done.stdout.endswith("\n"), done.stderr[-2000:]  # a tiny model's reply may be blank
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr[-2000:]


def test_a_lora_folder_without_peft_says_it_is_an_adapter(lora_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "peft", None)
    assert main(["chat", str(lora_dir), "--prompt", "안녕"]) == 2
    err = capsys.readouterr().err
    assert "a LoRA adapter for" in err and 'pip install "smolite_hf[peft]"' in err and "merge_and_unload" in err
    assert "config.json: missing" not in err
