import json

import pytest
from transformers import AutoConfig

from smolite_hf import SmoliteConfig
from smolite_hf.configuration_smolite import SIZE_ALIASES, SIZE_PRESETS


def test_defaults_are_the_released_small_size():
    config = SmoliteConfig()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (72000, 256, 6)
    assert (config.num_attention_heads, config.intermediate_size, config.max_position_embeddings) == (8, 1024, 100)
    assert config.hidden_dropout == 0.1 and config.adapter_size == 64 and config.layer_norm_eps == 1e-5
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert config.tie_word_embeddings is True and config.label_smoothing == 0.1
    assert config.head_dim == 32


def test_keras_constructor_names_are_aliases():
    config = SmoliteConfig(d_model=64, n_layers=3, d_ff=96, num_heads=4, seq_len=50, dropout_rate=0.2, adapter_dim=8)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 3, 96)
    assert (config.num_attention_heads, config.max_position_embeddings, config.hidden_dropout) == (4, 50, 0.2)
    assert config.adapter_size == 8
    assert (config.d_model, config.n_layers, config.d_ff, config.num_heads, config.seq_len) == (64, 3, 96, 4, 50)
    config.d_model = 128
    assert config.hidden_size == 128


def test_legacy_rope_theta_keyword():
    assert SmoliteConfig(rope_theta=500.0).rope_parameters == {"rope_theta": 500.0, "rope_type": "default"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 100, "num_attention_heads": 8}, "hidden_size (100) must be divisible by num_attention_heads (8)"),
        ({"d_model": 60, "num_heads": 7}, "hidden_size (60) must be divisible by num_attention_heads (7)"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
        ({"n_layers": -1}, "num_hidden_layers (n_layers) must be a positive integer, got -1"),
        ({"intermediate_size": 0}, "intermediate_size (d_ff) must be a positive integer, got 0"),
        ({"max_position_embeddings": 0}, "max_position_embeddings (seq_len, max_len) must be a positive integer, got 0"),
        ({"adapter_size": 0}, "adapter_size (adapter_dim) must be a positive integer, got 0"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1), got 1.0"),
        ({"label_smoothing": -0.1}, "label_smoothing must be in [0, 1), got -0.1"),
        ({"dropout_rate": 1.5}, "hidden_dropout (dropout_rate) must be in [0, 1), got 1.5"),
        ({"hidden_size": 12, "num_attention_heads": 4}, "head size hidden_size / num_attention_heads = 3 must be even"),
        ({"eos_token_id": 72000}, "eos_token_id = 72000 is outside the vocabulary [0, 72000)"),
    ],
)
def test_invalid_values_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError) as error:
        SmoliteConfig(**kwargs)
    assert message in str(error.value)


def test_save_and_load_round_trip(tmp_path):
    config = SmoliteConfig(d_model=64, n_layers=2, num_heads=4, d_ff=128, vocab_size=1000, label_smoothing=0.0)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is SmoliteConfig
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert (loaded.hidden_size, loaded.label_smoothing, loaded.vocab_size) == (64, 0.0, 1000)


def test_invalid_value_set_after_construction_is_refused_on_save(tmp_path):
    config = SmoliteConfig()
    config.label_smoothing = 2.0
    with pytest.raises(Exception, match="label_smoothing must be in"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_size_presets_have_honest_names():
    small = SmoliteConfig.from_size("small")
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads) == (256, 6, 8)
    assert (small.intermediate_size, small.adapter_size) == (1024, 64)
    assert small.to_diff_dict() == SmoliteConfig().to_diff_dict()  # "small" is the released Small: the defaults
    mini, tiny = SmoliteConfig.from_size("mini"), SmoliteConfig.from_size("tiny")
    assert (mini.hidden_size, mini.num_hidden_layers, mini.num_attention_heads, mini.intermediate_size,
            mini.adapter_size) == (128, 4, 4, 512, 32)
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.intermediate_size,
            tiny.adapter_size) == (64, 2, 4, 128, 16)
    assert SIZE_ALIASES == {"seed": "small"}
    assert SmoliteConfig.from_size("seed").to_diff_dict() == small.to_diff_dict()
    assert set(SIZE_PRESETS) == {"small", "mini", "tiny"}


def test_from_size_applies_overrides_and_validates_them():
    config = SmoliteConfig.from_size("tiny", vocab_size=1500, max_position_embeddings=64, hidden_dropout=0.0)
    assert (config.vocab_size, config.max_position_embeddings, config.hidden_size) == (1500, 64, 64)
    with pytest.raises(ValueError, match=r"hidden_size \(64\) must be divisible by num_attention_heads \(5\)"):
        SmoliteConfig.from_size("tiny", num_attention_heads=5)


def test_an_unknown_size_names_the_sizes():
    with pytest.raises(ValueError) as error:
        SmoliteConfig.from_size("large")
    message = str(error.value)
    assert "Unknown Smolite size 'large'" in message
    assert all(f"'{name}'" in message for name in ("small", "mini", "tiny", "seed"))


def test_the_fused_loss_is_a_config_field_on_by_default_also_for_old_config_files(tmp_path):
    assert SmoliteConfig().fuse_linear_cross_entropy is True
    SmoliteConfig(fuse_linear_cross_entropy=False).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).fuse_linear_cross_entropy is False
    data = json.loads((tmp_path / "config.json").read_text())
    del data["fuse_linear_cross_entropy"]  # as written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert AutoConfig.from_pretrained(tmp_path).fuse_linear_cross_entropy is True
