import os
from pathlib import Path

import numpy as np
import pytest
import torch

from smolite_hf import SmoliteConfig, SmoliteForCausalLM

REPO = Path(__file__).resolve().parents[1]
# CI keeps `shared/` beside the checkout; SMOLITE_SHARED points elsewhere if needed.
SHARED = Path(os.environ.get("SMOLITE_SHARED", REPO.parent / "shared"))
KERAS_REFERENCE = SHARED / "fixtures" / "keras_reference"


def keras_reference_file(name: str) -> Path:
    path = KERAS_REFERENCE / name
    if not path.exists():
        pytest.fail(f"fixture {path} is missing: tests need ../shared beside the checkout (or SMOLITE_SHARED).")
    return path


@pytest.fixture(scope="session")
def expected():
    return dict(np.load(keras_reference_file("expected.npz")))


@pytest.fixture(scope="session")
def keras_weights_path() -> Path:
    return keras_reference_file("smolite_tiny.weights.h5")


@pytest.fixture(scope="session")
def sentencepiece_model_path() -> Path:
    return keras_reference_file("tokenizer.model")


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory, keras_weights_path, sentencepiece_model_path) -> Path:
    """The Keras fixture converted with its tokenizer, as `smolite convert --tokenizer` does."""
    from smolite_hf.convert_smolite_keras_to_hf import convert_keras_to_hf

    out = tmp_path_factory.mktemp("converted") / "smolite-tiny"
    return convert_keras_to_hf(keras_weights_path, out, tokenizer=sentencepiece_model_path)


@pytest.fixture(scope="session")
def converted_model(converted_dir):
    return SmoliteForCausalLM.from_pretrained(converted_dir).eval()


def tiny_config(**overrides) -> SmoliteConfig:
    fields = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        adapter_size=16,
        max_position_embeddings=64,
        pad_token_id=0,
        unk_token_id=1,
        bos_token_id=2,
        sep_token_id=3,
        eos_token_id=4,
    )
    fields.update(overrides)
    return SmoliteConfig(**fields)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(hidden_dropout=0.0))
    # Non-zero biases and norm parameters, so that tests exercise them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: subprocess, browser and other long-running tests (deselect with -m 'not slow')")
