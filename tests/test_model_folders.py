"""Corrupted or hostile model folders: every command that reads one (`chat`, `serve`, `evaluate`, `train
--from-pretrained`) refuses with a message naming the file and the problem; pickle weights need `--allow-pickle`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from smolite_hf import SmoliteForCausalLM, folders
from smolite_hf.chat import load_chat_model
from smolite_hf.evaluation import evaluate_model
from smolite_hf.folders import ModelFolderError, check_model_folder, load_model
from smolite_hf.serving import serve
from smolite_hf.training import train

from .conftest import keras_reference_file


def truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "model.safetensors", "truncated"


def truncate_header(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:6])
    return "model.safetensors", "truncated"


def flip_a_bit(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10  # inside the tensor data: safetensors itself cannot notice
    path.write_bytes(bytes(data))
    return "model.safetensors", "SHA-256 differs"


def config_not_json(folder):
    (folder / "config.json").write_text('{"model_type": "smolite", "hidden_size": 6', encoding="utf-8")
    return "config.json", "not valid JSON"


def config_wrong_type(folder):
    edit_config(folder, hidden_size="sixty-four")
    return "config.json", "hidden_size"


def config_other_model(folder):
    edit_config(folder, model_type="llama")
    return "config.json", "not 'smolite'"


def config_more_layers(folder):
    edit_config(folder, num_hidden_layers=3)
    return "model.layers.2", "do not belong together"


def config_other_width(folder):
    config = json.loads((folder / "config.json").read_text())
    edit_config(folder, intermediate_size=config["intermediate_size"] * 2)
    return "mlp.gate_proj.weight", "do not belong together"


def no_tokenizer(folder):
    (folder / "tokenizer.json").unlink()
    return "tokenizer.json", "missing"


def no_weights(folder):
    (folder / "model.safetensors").unlink()
    return "model.safetensors", "missing"


def interrupted_save(folder):
    (folder / ".smolite-saving").write_text("")
    (folder / "config.json").unlink()
    return str(folder), "interrupted"


def pickle_weights(folder):
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    (folder / "checksums.json").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return "pytorch_model.bin", "--allow-pickle"


def edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


CORRUPTIONS = [truncate, truncate_header, flip_a_bit, config_not_json, config_wrong_type, config_other_model,
               config_more_layers, config_other_width, no_tokenizer, no_weights, interrupted_save, pickle_weights]


@pytest.fixture
def damaged(converted_dir, tmp_path, request):
    folder = tmp_path / "model"
    shutil.copytree(converted_dir, folder)
    return folder, *request.param(folder)


def _loaders(folder):
    data = keras_reference_file("conversations.jsonl")
    return {
        "chat": lambda: load_chat_model(folder, device="cpu"),
        "serve": lambda: serve(folder, port=1),  # refused before anything is bound
        "evaluate": lambda: evaluate_model(folder, data),
        "train --from-pretrained": lambda: train(folder.parent / "run", data, from_pretrained=folder, max_steps=1,
                                                 disable_tqdm=True),
    }


@pytest.mark.parametrize("damaged", CORRUPTIONS, indirect=True, ids=[c.__name__ for c in CORRUPTIONS])
def test_every_command_refuses_a_damaged_folder_naming_file_and_problem(damaged):
    folder, names, problem = damaged
    for command, load in _loaders(folder).items():
        with pytest.raises(ModelFolderError) as caught:
            load()
        message = str(caught.value)
        assert names in message and problem in message, f"{command}: {message}"
        assert not (folder.parent / "run").exists() or not any((folder.parent / "run").glob("checkpoint-*"))


def test_the_undamaged_folder_passes_and_checksums_are_written(converted_dir):
    config = check_model_folder(converted_dir)
    record = json.loads((converted_dir / "checksums.json").read_text())
    assert set(record["files"]) == {"model.safetensors"} and config.model_type == "smolite"


def test_pickle_weights_load_with_allow_pickle_and_give_the_same_model(converted_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(converted_dir, folder)
    pickle_weights(folder)
    model, _ = load_chat_model(folder, device="cpu", allow_pickle=True)
    reference, _ = load_chat_model(converted_dir, device="cpu")
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_the_commands_exit_2_with_the_message_and_no_traceback(converted_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(converted_dir, folder)
    flip_a_bit(folder)
    data = str(keras_reference_file("conversations.jsonl"))
    commands = [
        ["chat", str(folder), "--prompt", "안녕"],
        ["serve", str(folder), "--port", "1"],
        ["evaluate", str(folder), "--data", data],
        ["train", "--output-dir", str(tmp_path / "run"), "--data", data, "--from-pretrained", str(folder), "--max-steps", "1"],
    ]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "smolite_hf", *command], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert f"{folder / 'model.safetensors'}: its SHA-256 differs" in done.stderr, done.stderr[-2000:]


def test_a_folder_is_hashed_once_per_load_and_again_after_a_change(converted_dir, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(converted_dir, folder)
    hashed = []
    real = folders.sha256_of
    monkeypatch.setattr(folders, "sha256_of", lambda path: (hashed.append(Path(path).name), real(path))[1])
    load_chat_model(folder, device="cpu")  # check_model_folder, then load_model: the weights are hashed once
    assert hashed == ["model.safetensors"]
    flip_a_bit(folder)
    with pytest.raises(ModelFolderError, match="SHA-256 differs"):
        load_model(folder)
    assert hashed == ["model.safetensors"] * 2


def test_checksums_have_one_writer_and_one_verifier(converted_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(converted_dir, folder)
    (folder / "checksums.json").unlink()
    folders.verify_weight_checksums(folder)  # nothing recorded: nothing to compare
    record = folders.write_weight_checksums(folder)
    assert record == json.loads((folder / "checksums.json").read_text())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert record["files"]["model.safetensors"]["sha256"] == digest
    assert record["files"]["model.safetensors"]["size"] == (folder / "model.safetensors").stat().st_size
    folders.verify_weight_checksums(folder)
    flip_a_bit(folder)
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: its SHA-256 differs"):
        folders.verify_weight_checksums(folder)
    truncate(folder)
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: \d+ bytes, but checksums\.json records"):
        folders.verify_weight_checksums(folder)


def test_the_smolite_writers_record_checksums_and_save_pretrained_alone_does_not(converted_dir, tmp_path):
    model = SmoliteForCausalLM.from_pretrained(converted_dir)
    model.save_pretrained(tmp_path / "plain")  # a standard transformers folder: no checksums.json, still loads
    assert not (tmp_path / "plain" / "checksums.json").exists()
    check_model_folder(tmp_path / "plain", tokenizer=False)

    staging, final = tmp_path / "staging", tmp_path / "final"
    model.save_pretrained(staging)
    final.mkdir()
    folders.replace_folder_contents(staging, final)  # how `smolite train` writes its final folder
    folders.verify_weight_checksums(final)
    assert set(json.loads((final / "checksums.json").read_text())["files"]) == {"model.safetensors"}

    checkpoint = tmp_path / "run" / "checkpoint-7"
    model.save_pretrained(checkpoint)  # what the Trainer does, before its on_save callbacks
    args = SimpleNamespace(output_dir=str(tmp_path / "run"))
    state = SimpleNamespace(global_step=7, is_world_process_zero=True)
    folders.WeightChecksumCallback().on_save(args, state, control=None)
    assert set(json.loads((checkpoint / "checksums.json").read_text())["files"]) == {"model.safetensors"}
    folders.verify_weight_checksums(checkpoint)
