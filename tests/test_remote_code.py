"""A saved folder loads with `trust_remote_code=True` where `smolite_hf` cannot be imported (Hub users), and trains
there: the loss (`loss_smolite.py`, fused in training mode) travels with the model."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from smolite_hf import SmoliteForCausalLM

from .conftest import tiny_config

# Runs in a fresh interpreter with `smolite_hf` made unimportable, from a folder where it is not on the path.
REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["smolite_hf"] = None  # any `import smolite_hf` now raises ImportError
    import numpy as np, torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    folder, out = sys.argv[1], sys.argv[2]
    try:
        import smolite_hf  # noqa: F401
        raise SystemExit("smolite_hf is importable; the test would prove nothing")
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    ids = torch.tensor([[2, 17, 33, 8, 91, 3]])
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    labels = torch.tensor([[-100, -100, -100, 8, 91, 3]])
    loss = model(ids, labels=labels).loss
    model.train()
    trained = model(ids, labels=labels)  # the fused head-plus-loss of loss_smolite.py
    assert trained.logits is None
    trained.loss.backward()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()  # the way people (and vLLM) load first
    assert type(base).__name__ == "SmoliteModel" and type(base).__module__.startswith("transformers_modules.")
    with torch.no_grad():
        hidden = base(ids).last_hidden_state
    np.savez(out, hidden=hidden.numpy(), logits=logits.numpy(), generated=generated.numpy(), loss=loss.detach().numpy(),
             train_loss=trained.loss.detach().numpy(), embed_grad=model.model.embed_tokens.weight.grad.numpy())
    """
)


def test_trust_remote_code_load_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = SmoliteForCausalLM(tiny_config(hidden_dropout=0.0)).eval()
    folder = tmp_path / "smolite-remote"
    model.save_pretrained(folder)
    assert {"configuration_smolite.py", "modeling_smolite.py", "loss_smolite.py"} <= {p.name for p in folder.iterdir()}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_smolite.SmoliteModel" and "AutoModelForCausalLM" in auto_map
    script = tmp_path / "load.py"
    script.write_text(REMOTE_LOAD)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = np.load(tmp_path / "out.npz")
    ids = torch.tensor([[2, 17, 33, 8, 91, 3]])
    with torch.no_grad():
        np.testing.assert_allclose(result["logits"], model(ids).logits.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(result["hidden"], model.model(ids).last_hidden_state.numpy(), atol=1e-6, rtol=0)
        expected = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert result["generated"].tolist() == expected.tolist()
    labels = torch.tensor([[-100, -100, -100, 8, 91, 3]])
    with torch.no_grad():
        np.testing.assert_allclose(result["loss"], model(ids, labels=labels).loss.numpy(), atol=1e-6, rtol=0)
    model.train()
    trained = model(ids, labels=labels)
    trained.loss.backward()
    np.testing.assert_allclose(result["train_loss"], trained.loss.detach().numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(result["embed_grad"], model.model.embed_tokens.weight.grad.numpy(), atol=1e-6, rtol=0)
