"""A model folder written by smolite_hf 0.1.0 (before the layout of issue 13) still loads, with the same logits,
greedy tokens and losses.

`tests/fixtures/legacy_folder_v0_1/` was written by `tests/fixtures/make_legacy_folder_v0_1.py` at commit 0362e85
(`save_pretrained` of a tiny random model and a tokenizer trained on the built-in data), and
`legacy_folder_v0_1_expected.npz` holds what that version computed from it. Its `config.json` predates every config
field added since, so it also shows that such files load with the old behaviour.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smolite_hf import SmoliteConfig, SmoliteForCausalLM
from smolite_hf.folders import check_model_folder, load_model, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "legacy_folder_v0_1"
PROMPTS = [
    [{"role": "user", "content": "안녕하세요"}],
    [{"role": "user", "content": "주말에 뭐 하면 좋을까?"}, {"role": "assistant", "content": "산책 어때?"},
     {"role": "user", "content": "좋아"}],
]


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURES / "legacy_folder_v0_1_expected.npz"))


@pytest.fixture(scope="module")
def legacy():
    return load_model(LEGACY).eval(), load_tokenizer(LEGACY)


def test_the_legacy_folder_passes_the_folder_checks():
    config = check_model_folder(LEGACY)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, 280)
    assert "fuse_linear_cross_entropy" not in json.loads((LEGACY / "config.json").read_text(encoding="utf-8"))


def test_the_legacy_tokenizer_encodes_the_same_ids(legacy, expected):
    _, tokenizer = legacy
    encoded = tokenizer.apply_chat_template(PROMPTS, add_generation_prompt=True, padding=True, return_tensors="np",
                                            return_dict=True)
    np.testing.assert_array_equal(encoded["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(encoded["attention_mask"], expected["attention_mask"])


def test_the_legacy_model_gives_the_same_logits_and_greedy_tokens(legacy, expected):
    model, _ = legacy
    assert type(model) is SmoliteForCausalLM
    ids, mask = torch.from_numpy(expected["input_ids"]), torch.from_numpy(expected["attention_mask"])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        greedy = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, min_length=0,
                                sequence_bias=None, repetition_penalty=1.0)
    torch.testing.assert_close(logits, torch.from_numpy(expected["logits"]), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(greedy.numpy(), expected["greedy"])


def test_the_legacy_model_gives_the_same_loss_in_eval_and_training_mode(legacy, expected):
    model, _ = legacy
    ids, labels = torch.from_numpy(expected["train_ids"]), torch.from_numpy(expected["labels"])
    with torch.no_grad():
        eval_loss = model.eval()(ids, labels=labels).loss
    train_out = model.train()(ids, labels=labels)  # hidden_dropout is 0 in this folder: a deterministic training mode
    model.eval()
    torch.testing.assert_close(eval_loss, torch.from_numpy(expected["eval_loss"]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(train_out.loss.detach(), torch.from_numpy(expected["train_loss"]), rtol=1e-6, atol=1e-6)
    assert train_out.logits is None  # an old config without the fusion field trains through the fused head, as then


def test_the_legacy_folder_saves_again_and_reloads_identically(legacy, expected, tmp_path):
    model, tokenizer = legacy
    copy = tmp_path / "resaved"
    model.save_pretrained(copy)
    tokenizer.save_pretrained(copy)
    check_model_folder(copy)
    reloaded = SmoliteForCausalLM.from_pretrained(copy).eval()
    assert isinstance(reloaded.config, SmoliteConfig)
    ids, mask = torch.from_numpy(expected["input_ids"]), torch.from_numpy(expected["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, attention_mask=mask).logits, torch.from_numpy(expected["logits"]),
                                   rtol=0, atol=1e-5)
    shutil.rmtree(copy)
