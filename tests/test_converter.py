"""`smolite convert`: sizes from shapes, refusals that name the problem, nothing half-written."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from smolite_hf import SmoliteForCausalLM
from smolite_hf import convert_smolite_keras_to_hf as converter
from smolite_hf.convert_smolite_keras_to_hf import SmoliteConversionError, convert_keras_to_hf

from .conftest import tiny_config
from .keras_files import write_keras_weights


def leftovers(folder):
    """Anything the converter may have left beside its output: temporary or backup folders."""
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def test_writes_a_folder_the_auto_classes_load(converted_dir):
    names = set(os.listdir(converted_dir))
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert {"configuration_smolite.py", "modeling_smolite.py", "loss_smolite.py"} <= names  # for trust_remote_code
    assert "checksums.json" in names
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["model_type"] == "smolite" and config["architectures"] == ["SmoliteForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_smolite.SmoliteForCausalLM"
    assert type(AutoModelForCausalLM.from_pretrained(converted_dir)) is SmoliteForCausalLM
    generation = GenerationConfig.from_pretrained(converted_dir)
    assert generation.eos_token_id == config["eos_token_id"] and generation.pad_token_id == config["pad_token_id"]


@pytest.mark.parametrize("layers", [2, 12])
def test_sizes_come_from_shapes_and_blocks_are_sorted_numerically(tmp_path, layers):
    torch.manual_seed(layers)
    config = tiny_config(vocab_size=77, hidden_size=48, num_attention_heads=3, intermediate_size=40,
                         adapter_size=12, num_hidden_layers=layers, hidden_dropout=0.0)
    model = SmoliteForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)  # no identity-like norms: a swapped block would change the logits
    write_keras_weights(model, tmp_path / "w.weights.h5")
    out = convert_keras_to_hf(tmp_path / "w.weights.h5", tmp_path / "out")
    converted = SmoliteForCausalLM.from_pretrained(out).eval()
    c = converted.config
    assert (c.vocab_size, c.hidden_size, c.num_attention_heads, c.head_dim) == (77, 48, 3, 16)
    assert (c.intermediate_size, c.adapter_size, c.num_hidden_layers) == (40, 12, layers)
    ids = torch.randint(0, 77, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_optimizer_group_is_ignored(tmp_path):
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(hidden_dropout=0.0)).eval()
    write_keras_weights(model, tmp_path / "trained.weights.h5", optimizer=True)
    out = convert_keras_to_hf(tmp_path / "trained.weights.h5", tmp_path / "out")
    ids = torch.randint(0, 99, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(SmoliteForCausalLM.from_pretrained(out)(ids).logits, model(ids).logits)


def test_refuses_a_file_that_is_not_hdf5(tmp_path):
    bad = tmp_path / "notes.weights.h5"
    bad.write_text("hello")
    with pytest.raises(SmoliteConversionError, match=r"notes\.weights\.h5: not a readable HDF5 file"):
        convert_keras_to_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_refuses_a_missing_file(tmp_path):
    with pytest.raises(SmoliteConversionError, match="no such file"):
        convert_keras_to_hf(tmp_path / "absent.weights.h5", tmp_path / "out")


def test_refuses_hdf5_without_the_smolite_layout(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.zeros((3, 3)))
    with pytest.raises(SmoliteConversionError, match=r"layers/embedding"):
        convert_keras_to_hf(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_missing_dataset_naming_its_path(tmp_path, keras_weights_path):
    damaged = tmp_path / "damaged.weights.h5"
    shutil.copy(keras_weights_path, damaged)
    with h5py.File(damaged, "a") as f:
        del f["blocks/gpt_block_1/adapter_up/vars/1"]
    with pytest.raises(SmoliteConversionError, match=r"'blocks/gpt_block_1/adapter_up/vars/1' is missing"):
        convert_keras_to_hf(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_mis_shaped_dataset_naming_its_path(tmp_path, keras_weights_path):
    damaged = tmp_path / "damaged.weights.h5"
    shutil.copy(keras_weights_path, damaged)
    with h5py.File(damaged, "a") as f:
        del f["blocks/gpt_block_1/ffn/out/vars/0"]
        f.create_dataset("blocks/gpt_block_1/ffn/out/vars/0", data=np.zeros((100, 64), dtype=np.float32))
    with pytest.raises(SmoliteConversionError, match=r"'blocks/gpt_block_1/ffn/out/vars/0' has shape \[100, 64\], expected \[128, 64\]"):
        convert_keras_to_hf(damaged, tmp_path / "out")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_refuses_a_truncated_file(tmp_path, keras_weights_path, keep):
    data = keras_weights_path.read_bytes()
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SmoliteConversionError, match="truncated.weights.h5"):
        convert_keras_to_hf(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path, keras_weights_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SmoliteConversionError, match="exists and is not empty.*--overwrite"):
        convert_keras_to_hf(keras_weights_path, out)
    assert os.listdir(out) == ["keep.txt"]
    convert_keras_to_hf(keras_weights_path, out, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and (out / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_an_empty_existing_folder_is_used(tmp_path, keras_weights_path):
    (tmp_path / "out").mkdir()
    convert_keras_to_hf(keras_weights_path, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_a_conversion_that_fails_verification_writes_nothing(tmp_path, keras_weights_path, monkeypatch):
    real = converter.keras_to_state_dict

    def wrong_mapping(weights):  # e.g. a mapping that forgot to split value and gate in the SwiGLU projection
        state_dict = real(weights)
        up, gate = state_dict["model.layers.0.mlp.up_proj.weight"], state_dict["model.layers.0.mlp.gate_proj.weight"]
        state_dict["model.layers.0.mlp.up_proj.weight"], state_dict["model.layers.0.mlp.gate_proj.weight"] = gate, up
        return state_dict

    monkeypatch.setattr(converter, "keras_to_state_dict", wrong_mapping)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous conversion")
    with pytest.raises(SmoliteConversionError, match="does not reproduce the Keras forward pass"):
        convert_keras_to_hf(keras_weights_path, out, overwrite=True)
    assert os.listdir(out) == ["old.txt"]  # the previous folder is untouched
    assert leftovers(tmp_path) == []


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "smolite_hf", *args], capture_output=True, text=True, cwd=cwd)


def test_command_line(tmp_path, keras_weights_path):
    done = run_cli("convert", "--keras-weights", str(keras_weights_path), "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "Converted" in done.stdout and (tmp_path / "out" / "model.safetensors").exists()

    again = run_cli("convert", "--keras-weights", str(keras_weights_path), "--output-dir", str(tmp_path / "out"))
    assert again.returncode == 2
    assert "exists and is not empty" in again.stderr and "Traceback" not in again.stderr

    missing = run_cli("convert", "--keras-weights", str(tmp_path / "nope.h5"), "--output-dir", str(tmp_path / "o2"))
    assert missing.returncode == 2 and "nope.h5: no such file" in missing.stderr


def test_tokenizer_is_added_and_sets_the_special_ids(converted_dir, sentencepiece_model_path):
    import sentencepiece
    from transformers import AutoTokenizer

    from smolite_hf import SmoliteTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    assert type(tokenizer) is SmoliteTokenizer
    spm = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model_path))
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["pad_token_id"] == spm.piece_to_id("<pad>") and config["eos_token_id"] == spm.piece_to_id("<end>")
    assert config["bos_token_id"] == spm.piece_to_id("<start>") and config["sep_token_id"] == spm.piece_to_id("<sep>")
    assert tokenizer("<start> 안녕 <sep>")["input_ids"] == spm.encode("<start> 안녕 <sep>")


def test_refuses_a_tokenizer_of_another_vocabulary_size(tmp_path, sentencepiece_model_path):
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(vocab_size=500)).eval()
    write_keras_weights(model, tmp_path / "w.weights.h5")
    with pytest.raises(SmoliteConversionError, match="tokenizer has 1000 pieces but the weights .* vocabulary of 500"):
        convert_keras_to_hf(tmp_path / "w.weights.h5", tmp_path / "out", tokenizer=sentencepiece_model_path)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_the_key_table_covers_the_model_and_its_shapes_come_from_the_meta_model(keras_weights_path):
    weights = converter.read_keras_weights(keras_weights_path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SmoliteForCausalLM(weights.config).state_dict().items()}
    state_dict = converter.keras_to_state_dict(weights)
    assert set(state_dict) == set(expected) - {"lm_head.weight"}  # the head is tied to the embedding
    assert {k: v.shape for k, v in state_dict.items()} == {k: expected[k] for k in state_dict}
    read = {name for rule in converter.KEY_TABLE for _, name in weights.datasets(rule)}
    assert read == set(weights.arrays) and len(read) == 3 + 20 * weights.num_hidden_layers


def test_the_keras_file_is_hashed_by_streaming(tmp_path, keras_weights_path, monkeypatch):
    import hashlib
    from pathlib import Path

    real = Path.read_bytes

    def refuse_the_weights(path):
        assert Path(path).name != keras_weights_path.name, "the Keras file was read whole into memory"
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", refuse_the_weights)
    out = convert_keras_to_hf(keras_weights_path, tmp_path / "out")
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["keras_weights_sha256"] == hashlib.sha256(real(keras_weights_path)).hexdigest()
