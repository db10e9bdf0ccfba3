"""torch.compile (Inductor, CPU) works for training and for generation with a static cache."""

import torch

from smolite_hf import SmoliteForCausalLM

from .conftest import tiny_config


def test_compiled_training_step_and_static_cache_generation_match_eager():
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(hidden_dropout=0.0))
    ids = torch.randint(5, 99, (2, 16))
    labels = ids.clone()
    labels[:, :5] = -100

    eager_loss = model(ids, labels=labels).loss
    eager_loss.backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model)
    loss = compiled(ids, labels=labels).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)

    model.eval()
    prompt = torch.tensor([[2, 17, 33, 8, 91, 3]])
    kwargs = dict(do_sample=False, max_new_tokens=10, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        eager = model.generate(prompt, **kwargs)
        model.forward = torch.compile(model.forward)
        static = model.generate(prompt, cache_implementation="static", **kwargs)
    assert static.tolist() == eager.tolist()
