"""Shared transformers behaviours on a tiny random Smolite."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from smolite_hf import SmoliteForCausalLM, SmoliteModel
from smolite_hf.loss_smolite import (
    fused_linear_causal_lm_loss,
    label_smoothed_causal_lm_loss,
    linear_smoothed_cross_entropy,
    smolite_causal_lm_loss,
)

from .conftest import tiny_config

PROMPTS = [[2, 17, 33, 8, 91, 3], [2, 45, 3], [2, 60, 61, 62, 3]]


def left_padded(prompts, pad_id=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_default_attention_is_sdpa(tiny_model):
    assert tiny_model.config._attn_implementation == "sdpa"


def test_embedding_and_head_are_tied(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight
    assert SmoliteForCausalLM._tied_weights_keys == {"lm_head.weight": "model.embed_tokens.weight"}


def test_cached_step_by_step_decoding_equals_full_forward(tiny_model):
    ids = torch.randint(5, 99, (2, 12))
    with torch.no_grad():
        full = tiny_model(ids).logits
        cache = DynamicCache(config=tiny_model.config)
        out = tiny_model(ids[:, :5], cache=cache, use_cache=True)
        steps = [out.logits]
        for t in range(5, 12):
            out = tiny_model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equals_single_sequences(tiny_model):
    ids, mask = left_padded(PROMPTS)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = tiny_model(ids, attention_mask=mask, position_ids=position_ids).logits
        for row, prompt in enumerate(PROMPTS):
            single = tiny_model(torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(batched[row, -len(prompt) :], single, atol=1e-5, rtol=1e-5)


def test_positions_come_from_the_attention_mask_when_not_given(tiny_model):
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        batched = tiny_model(ids, attention_mask=mask).logits
        cache = DynamicCache(config=tiny_model.config)
        first = tiny_model(ids[:, :-2], attention_mask=mask[:, :-2], cache=cache, use_cache=True)
        steps = [first.logits]
        for t in (ids.shape[1] - 2, ids.shape[1] - 1):  # step decoding with a growing mask, no position_ids
            steps.append(tiny_model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True).logits)
    for row, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            single = tiny_model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(batched[row, -len(prompt) :], single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat(steps, 1)[row, -len(prompt) :], single, atol=1e-5, rtol=1e-5)


def test_left_padded_cached_generation_equals_one_by_one(tiny_model):
    ids, mask = left_padded(PROMPTS)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        batched = tiny_model.generate(ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
        for row, prompt in enumerate(PROMPTS):
            single = tiny_model.generate(torch.tensor([prompt]), **kwargs)[0, len(prompt) :]
            assert batched[row].tolist() == single.tolist()


def test_generation_with_cache_equals_without(tiny_model):
    prompt = torch.tensor([PROMPTS[0]])
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        cached = tiny_model.generate(prompt, use_cache=True, **kwargs)
        uncached = tiny_model.generate(prompt, use_cache=False, **kwargs)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_equals_eager(tiny_model, padded):
    ids, mask = left_padded(PROMPTS) if padded else (torch.randint(5, 99, (2, 10)), None)
    eager = copy.deepcopy(tiny_model)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager" and tiny_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa_logits = tiny_model(ids, attention_mask=mask).logits
        eager_logits = eager(ids, attention_mask=mask).logits
    if mask is not None:  # fully masked query rows (left pads) are undefined; compare real positions
        sdpa_logits, eager_logits = sdpa_logits[mask.bool()], eager_logits[mask.bool()]
    torch.testing.assert_close(sdpa_logits, eager_logits, atol=1e-5, rtol=1e-5)


def test_an_attention_function_registered_with_transformers_is_the_one_called(tiny_model):
    """The contract of vLLM's and SGLang's transformers backends: `_supports_attention_backend`, and attention through
    `AttentionInterface` with the forward's keyword arguments passed down to it."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append((type(module).__name__, tuple(query.shape), kwargs.get("marker")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("smolite_test_recording", recording_attention)
    assert type(tiny_model)._supports_attention_backend
    custom = copy.deepcopy(tiny_model)
    custom.set_attn_implementation("smolite_test_recording")
    ids = torch.randint(5, 99, (2, 10))
    with torch.no_grad():
        expected = tiny_model(ids).logits
        got = custom(ids, marker="passed down").logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    layers = custom.config.num_hidden_layers
    assert len(calls) == layers and all(c == ("SmoliteAttention", (2, 4, 10, 8), "passed down") for c in calls)


def test_gradient_checkpointing_leaves_loss_and_gradients_unchanged(tiny_model):
    ids = torch.randint(5, 99, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100

    def loss_and_grads(model):
        model.train()
        model.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain_grads = loss_and_grads(tiny_model)
    checkpointed = copy.deepcopy(tiny_model)
    checkpointed.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.layers)
    ckpt_loss, ckpt_grads = loss_and_grads(checkpointed)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_save_and_load_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is SmoliteForCausalLM
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    ids = torch.randint(5, 99, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, tiny_model(ids).logits, atol=0, rtol=0)
    # the non-persistent rotary buffers are recomputed on load, not left as uninitialised memory
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq, tiny_model.model.rotary_emb.inv_freq)


def test_backbone_loads_from_a_causal_lm_folder(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    backbone = SmoliteModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 99, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(backbone(ids).last_hidden_state, tiny_model.model(ids).last_hidden_state)


def test_hidden_states_and_attentions_are_returned(tiny_model):
    tiny_model.set_attn_implementation("eager")
    ids = torch.randint(5, 99, (2, 9))
    with torch.no_grad():
        out = tiny_model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == tiny_model.config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[0], tiny_model.model.embed_tokens(ids))
    assert len(out.attentions) == tiny_model.config.num_hidden_layers
    attention = out.attentions[0]
    assert attention.shape == (2, 4, 9, 9)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 9))
    assert torch.all(attention.triu(diagonal=1) == 0)  # causal


def test_tuple_output(tiny_model):
    ids = torch.randint(5, 99, (1, 6))
    with torch.no_grad():
        as_tuple = tiny_model(ids, return_dict=False)
        as_dict = tiny_model(ids)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)


def test_logits_to_keep(tiny_model):
    ids = torch.randint(5, 99, (2, 9))
    with torch.no_grad():
        full = tiny_model(ids).logits
        last = tiny_model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 99)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=1e-6)


def test_resize_token_embeddings_keeps_tying(tiny_model):
    old = tiny_model.model.embed_tokens.weight.detach().clone()
    tiny_model.resize_token_embeddings(120)
    assert tiny_model.config.vocab_size == 120
    assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight
    assert tiny_model.model.embed_tokens.weight.shape == (120, 32)
    torch.testing.assert_close(tiny_model.model.embed_tokens.weight[:99], old)
    with torch.no_grad():
        assert tiny_model(torch.tensor([[5, 110]])).logits.shape == (1, 2, 120)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(hidden_dropout=0.5))
    ids = torch.randint(5, 99, (1, 8))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_loss_is_a_token_level_mean_of_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 7, 8, 9]])
    eps = 0.1
    # by hand: position t predicts labels[t + 1]; (1 - eps) * NLL + eps * mean(-log p) per target, mean over 5 targets
    log_probs = logits.log_softmax(-1)
    terms = []
    for b in range(2):
        for t in range(4):
            target = labels[b, t + 1].item()
            if target != -100:
                terms.append(-(1 - eps) * log_probs[b, t, target] - eps * log_probs[b, t].mean())
    expected = torch.stack(terms).mean()
    loss = label_smoothed_causal_lm_loss(logits, labels, vocab_size=11, label_smoothing=eps)
    torch.testing.assert_close(loss, expected)
    # with the Trainer's count over several micro-batches, the sum is divided by that count
    summed = label_smoothed_causal_lm_loss(logits, labels, vocab_size=11, label_smoothing=eps, num_items_in_batch=20)
    torch.testing.assert_close(summed, expected * 5 / 20)


def test_loss_without_any_target_is_zero(tiny_model):
    ids = torch.randint(5, 99, (1, 6))
    loss = tiny_model(ids, labels=torch.full_like(ids, -100)).loss
    assert loss.item() == 0.0


def test_generate_logits_equal_plain_forward_logits(tiny_model):
    """The logits that chose each new token (cached decoding) equal a full forward of the whole sequence."""
    prompt = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        out = tiny_model.generate(
            prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None,
            return_dict_in_generate=True, output_logits=True,
        )
        full = tiny_model(out.sequences).logits[0]
    steps = torch.stack([logits[0] for logits in out.logits])  # logits that chose new tokens 1..10
    torch.testing.assert_close(steps, full[len(PROMPTS[0]) - 1 : -1], atol=1e-5, rtol=1e-5)


def test_generate_sees_weights_changed_between_calls(tiny_model):
    prompt = torch.tensor([PROMPTS[1]])
    kwargs = dict(max_new_tokens=1, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        tiny_model.generate(prompt, **kwargs)
        last_hidden = tiny_model(prompt, output_hidden_states=True).hidden_states[-1][0, -1]
        tiny_model.lm_head.weight.data[7] = 100.0 * last_hidden  # through .data, as PEFT's merge does
        assert tiny_model.generate(prompt, **kwargs)[0, -1].item() == 7


def test_the_modeling_and_loss_files_import_only_torch_and_transformers():
    """Nothing in the Hub-bound model files reads files, clocks or the environment (no os, time, json, hashlib...)."""
    import ast
    from pathlib import Path

    import smolite_hf

    allowed = {"modeling_smolite.py": {"torch", "transformers", "collections"}, "loss_smolite.py": {"torch"}}
    for name, roots in allowed.items():
        tree = ast.parse((Path(smolite_hf.__file__).parent / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {alias.name.split(".")[0] for alias in node.names} <= roots, (name, ast.unparse(node))
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in roots, (name, ast.unparse(node))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("open", "__import__", "exec", "eval"), (name, ast.unparse(node))


def test_the_loss_goes_through_the_loss_function_hook(tiny_model):
    assert tiny_model.loss_function is smolite_causal_lm_loss
    assert tiny_model.loss_type == "ForCausalLM"  # the Trainer counts num_items_in_batch over shifted labels for it
    seen = []

    def recording(**kwargs):
        seen.append("logits" if kwargs.get("logits") is not None else "fused")
        return smolite_causal_lm_loss(**kwargs)

    ids = torch.tensor([[2, 17, 33, 3, 40, 41, 4]])
    labels = torch.tensor([[-100, -100, -100, -100, 40, 41, 4]])
    tiny_model.loss_function = recording
    try:
        with torch.no_grad():
            evaluated = tiny_model.eval()(ids, labels=labels).loss
        trained = tiny_model.train()(ids, labels=labels).loss
    finally:
        tiny_model.loss_function = smolite_causal_lm_loss
        tiny_model.eval()
    assert seen == ["logits", "fused"]
    torch.testing.assert_close(trained, evaluated, rtol=1e-6, atol=1e-6)  # dropout is 0 in the tiny model


def test_the_config_field_chooses_the_fused_training_loss(tiny_model):
    ids, mask = left_padded([[2, 17, 33, 8, 91, 3, 40, 41, 4], [2, 45, 3, 50, 4]])
    labels = torch.where(mask.bool(), ids, -100)
    tiny_model.train()
    fused = tiny_model(ids, attention_mask=mask, labels=labels)
    tiny_model.config.fuse_linear_cross_entropy = False
    try:
        plain = tiny_model(ids, attention_mask=mask, labels=labels)
        forced = tiny_model(ids, attention_mask=mask, labels=labels, skip_logits=True)  # a per-call override
    finally:
        tiny_model.config.fuse_linear_cross_entropy = True
        tiny_model.eval()
    assert fused.logits is None and forced.logits is None and plain.logits.shape == (2, 9, 99)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(forced.loss, plain.loss, rtol=1e-6, atol=1e-6)


def test_a_wrapped_head_gets_the_same_fused_loss_and_gradients():
    """A head that is not a plain bias-free Linear (PEFT, quantised) runs its own forward at the target rows."""

    class WrappedHead(torch.nn.Linear):
        pass

    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    labels = torch.tensor([[-100, 3, 4, -100, 9, 1], [-100, -100, 7, 8, 2, 5]])
    plain_head = torch.nn.Linear(16, 11, bias=False)
    wrapped = WrappedHead(16, 11, bias=False)
    wrapped.weight.data.copy_(plain_head.weight.data)
    want = label_smoothed_causal_lm_loss(plain_head(hidden), labels, vocab_size=11, label_smoothing=0.1)
    want_grad = torch.autograd.grad(want, hidden)[0]
    for head in (plain_head, wrapped):
        got = fused_linear_causal_lm_loss(hidden, head, labels, label_smoothing=0.1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(got, hidden)[0], want_grad, rtol=1e-5, atol=1e-6)


def _loss_and_grads(model, **inputs):
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("targets", ["labels", "shift_labels", "num_items_in_batch"])
def test_training_computes_the_head_only_at_targets_with_the_same_loss_and_gradients(tiny_model, targets):
    torch.manual_seed(1)
    ids, mask = left_padded([[2, 17, 33, 8, 91, 3, 40, 41, 4], [2, 45, 3, 50, 4], [2, 60, 61, 3, 70, 71, 72, 4]])
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :4] = -100  # prompt positions carry no target
    inputs = dict(input_ids=ids, attention_mask=mask)
    if targets == "shift_labels":
        inputs["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    else:
        inputs["labels"] = labels
    if targets == "num_items_in_batch":
        inputs["num_items_in_batch"] = torch.tensor(40)
    tiny_model.train()
    plain, plain_grads = _loss_and_grads(tiny_model, skip_logits=False, **inputs)
    fast, fast_grads = _loss_and_grads(tiny_model, **inputs)  # the training-mode default
    assert plain.logits.shape == (3, 9, 99) and fast.logits is None
    torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-6, atol=1e-6)
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    tiny_model.eval()
    with torch.no_grad():  # evaluation keeps full logits (compute_metrics needs them) and the same loss
        evaluated = tiny_model(**inputs)
    assert evaluated.logits.shape == (3, 9, 99)
    torch.testing.assert_close(evaluated.loss, plain.loss, rtol=1e-6, atol=1e-6)


def test_skip_logits_needs_targets(tiny_model):
    with pytest.raises(ValueError, match="pass labels"):
        tiny_model(torch.tensor([[2, 5, 6]]), skip_logits=True)


@pytest.mark.parametrize("chunk_bytes", [1 << 28, 4 * 50 * 7])  # one chunk, and chunks of 7 rows (not dividing 40)
@pytest.mark.parametrize("block_bytes", [1 << 22, 4 * 50 * 3])  # the softmax a chunk at once, and 3 rows at a time
def test_fused_linear_cross_entropy_equals_the_plain_computation(monkeypatch, chunk_bytes, block_bytes):
    from smolite_hf import loss_smolite

    monkeypatch.setattr(loss_smolite, "SOFTMAX_BLOCK_BYTES", block_bytes)
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (40,))
    plain = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, label_smoothing=0.1, reduction="sum")
    plain_grads = torch.autograd.grad(plain * 0.37, (hidden, weight))
    fused = linear_smoothed_cross_entropy(hidden, weight, targets, 0.1, chunk_bytes=chunk_bytes)
    fused_grads = torch.autograd.grad(fused * 0.37, (hidden, weight))
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_bytes", [1 << 22, 4 * 300 * 4])  # the softmax a chunk at once, and 4 rows at a time
def test_fused_linear_cross_entropy_under_bf16_autocast_matches_autocast_plain(monkeypatch, block_bytes):
    from smolite_hf import loss_smolite

    monkeypatch.setattr(loss_smolite, "SOFTMAX_BLOCK_BYTES", block_bytes)
    torch.manual_seed(0)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.nn.functional.cross_entropy((hidden @ weight.t()).float(), targets, label_smoothing=0.1, reduction="sum")
        fused = linear_smoothed_cross_entropy(hidden, weight, targets, 0.1, chunk_bytes=4 * 300 * 10)
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    assert fused_grads[1].dtype == torch.float32  # the master weight's gradient stays float32
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-3)
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_attention_runs_in_float32_under_cpu_bf16_autocast(monkeypatch):
    """torch's bfloat16 flash attention is slower than float32 on the CPUs measured (bench_attention_dtype.py), so
    under CPU bfloat16 autocast sdpa gets float32 queries, keys and values with autocast off; outside autocast, the
    dtype it is given."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(hidden_dropout=0.0)).train()
    input_ids = torch.randint(5, model.config.vocab_size, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    assert seen and all(call == (torch.float32,) * 3 + (False,) for call in seen), seen
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    seen.clear()
    with torch.no_grad():  # outside autocast nothing changes
        model(input_ids=input_ids)
    assert seen and all(call == (torch.float32,) * 3 + (False,) for call in seen), seen
