"""The converted Keras fixture reproduces the original implementation's stored outputs."""

import h5py
import numpy as np
import torch

from smolite_hf import SmoliteForCausalLM
from smolite_hf.convert_smolite_keras_to_hf import keras_reference_logits, read_keras_weights


def test_config_read_from_weight_shapes(converted_model):
    config = converted_model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (1000, 64, 2)
    assert (config.num_attention_heads, config.head_dim, config.intermediate_size, config.adapter_size) == (4, 16, 128, 64)


def test_logits_match_keras_at_every_position(converted_model, expected):
    input_ids = torch.from_numpy(expected["input_ids"]).long()
    with torch.no_grad():  # the original has no padding mask: compare with the mask all ones
        logits = converted_model(input_ids, attention_mask=torch.ones_like(input_ids)).logits
    assert logits.shape == expected["logits"].shape
    np.testing.assert_allclose(logits.numpy(), expected["logits"], atol=1e-4, rtol=0)


def test_hidden_states_match_keras(converted_model, expected, keras_weights_path):
    input_ids = torch.from_numpy(expected["input_ids"]).long()
    with torch.no_grad():
        hidden_states = converted_model(input_ids, output_hidden_states=True).hidden_states
    reference = expected["hidden_states"]  # [0] embeddings, [k] output of block k-1 (before the final norm)
    assert len(hidden_states) == reference.shape[0]
    for produced, stored in zip(hidden_states[:-1], reference[:-1]):
        np.testing.assert_allclose(produced.numpy(), stored, atol=1e-4, rtol=0)
    # transformers' convention: the last entry is after the final norm; apply the Keras LNf to the stored one.
    with h5py.File(keras_weights_path) as f:
        gamma, beta = f["layers/layer_normalization/vars/0"][()], f["layers/layer_normalization/vars/1"][()]
    last = torch.nn.functional.layer_norm(torch.from_numpy(reference[-1]), (64,), torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)
    np.testing.assert_allclose(hidden_states[-1].numpy(), last.numpy(), atol=1e-4, rtol=0)


def test_loss_with_original_labels_matches_keras(converted_model, expected):
    input_ids = torch.from_numpy(expected["input_ids"]).long()
    with torch.no_grad():
        loss = converted_model(input_ids, labels=torch.from_numpy(expected["labels_hf"])).loss
    assert abs(loss.item() - float(expected["loss"])) < 1e-4
    assert abs(float(expected["loss"]) - 6.7561994) < 1e-6


def test_loss_with_standard_labels_matches_reference(converted_model, expected):
    input_ids = torch.from_numpy(expected["input_ids"]).long()
    with torch.no_grad():
        loss = converted_model(input_ids, labels=torch.from_numpy(expected["labels_hf_standard"])).loss
    assert abs(loss.item() - float(expected["loss_hf_standard"])) < 1e-4


def test_label_smoothing_is_taken_from_the_config(converted_dir, expected):
    model = SmoliteForCausalLM.from_pretrained(converted_dir, label_smoothing=0.0).eval()
    input_ids = torch.from_numpy(expected["input_ids"]).long()
    with torch.no_grad():
        loss = model(input_ids, labels=torch.from_numpy(expected["labels_hf"])).loss
    assert abs(loss.item() - float(expected["nll"])) < 1e-4  # no smoothing: the plain NLL


def test_numpy_reference_forward_matches_keras(keras_weights_path, expected):
    """The converter's independent check is itself right: it reproduces the stored Keras logits."""
    weights = read_keras_weights(keras_weights_path)
    logits = keras_reference_logits(weights, expected["input_ids"][:, :40])
    np.testing.assert_allclose(logits, expected["logits"][:, :40], atol=1e-4, rtol=0)
