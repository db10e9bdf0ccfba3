"""LoRA fine-tuning through `smolite train --lora` (PEFT)."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from smolite_hf import SmoliteForCausalLM
from smolite_hf.training import train

from .conftest import keras_reference_file

TINY = dict(size="tiny", vocab_size=350, batch_size=4, eval_fraction=0.2, disable_tqdm=True, logging_steps=50)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    data = keras_reference_file("conversations.jsonl")
    return train(tmp_path_factory.mktemp("base") / "base", data, max_steps=2, **TINY).output_dir


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_only_adapters_and_merges_to_the_same_logits(tmp_path, base_dir, checkpointing):
    data = keras_reference_file("conversations.jsonl")
    result = train(tmp_path / "lora", data, from_pretrained=base_dir, lora=True, lora_r=4, max_steps=4,
                   learning_rate=1e-2, gradient_checkpointing=checkpointing, **TINY)
    folder = result.output_dir
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()  # an adapter, not a full copy
    adapter = load_file(folder / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert {name.split(".")[-3] for name in adapter} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert any(name.endswith("lora_B.weight") and adapter[name].abs().sum() > 0 for name in adapter)  # it learned

    base = SmoliteForCausalLM.from_pretrained(base_dir).eval()
    base_logits_before = base(torch.tensor([[5, 2, 40, 41, 5, 3]])).logits.detach()
    with_adapter = PeftModel.from_pretrained(base, folder).eval()
    ids = torch.tensor([[5, 2, 40, 41, 5, 3, 60, 61]])
    with torch.no_grad():
        adapted = with_adapter(ids).logits
        merged = with_adapter.merge_and_unload()
        assert type(merged) is SmoliteForCausalLM
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-5)
        fresh_base = SmoliteForCausalLM.from_pretrained(base_dir).eval()
        torch.testing.assert_close(fresh_base(ids[:, :6]).logits, base_logits_before)  # the base was not modified
        assert not torch.allclose(fresh_base(ids).logits, adapted, atol=1e-4)  # the adapter changes the outputs


def test_lora_needs_a_pretrained_model(tmp_path):
    with pytest.raises(ValueError, match="--lora fine-tunes adapters on a trained model"):
        train(tmp_path / "x", keras_reference_file("conversations.jsonl"), lora=True, **TINY)
