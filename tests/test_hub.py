"""`smolite push`: the exact files sent to the Hub, a card, a trust_remote_code load of what was sent, failures."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers.utils.hub as transformers_hub
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from smolite_hf.hub import SmolitePushError, push_model


class FakeHubApi:
    """Stands in for the HfApi object transformers calls; records what would be uploaded."""

    def __init__(self, fail=None):
        self.fail, self.files, self.commits = fail, {}, 0

    def create_repo(self, repo_id, **kwargs):
        if self.fail:
            raise self.fail
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        self.commits += 1
        for op in operations:
            source = op.path_or_fileobj
            self.files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else source.read()
        return SimpleNamespace(commit_url="https://hub/commit")

    def upload_folder(self, *args, **kwargs):
        raise AssertionError("the upload must go through create_commit")


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants

    api = FakeHubApi()
    monkeypatch.setattr(transformers_hub, "_hf_api", api)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # push_to_hub first looks for a remote card
    return api


def folder_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def test_push_sends_one_commit_with_everything_a_remote_code_user_needs(fake_hub, converted_dir, tmp_path):
    before = folder_digest(converted_dir)
    assert push_model(converted_dir, "someone/smolite-tiny") == "someone/smolite-tiny"
    assert fake_hub.commits == 1
    assert set(fake_hub.files) == {
        "README.md", "config.json", "configuration_smolite.py", "modeling_smolite.py", "loss_smolite.py",
        "model.safetensors",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenization_smolite.py",
        "chat_template.jinja", "checksums.json",
    }
    recorded = json.loads(fake_hub.files["checksums.json"])["files"]["model.safetensors"]["sha256"]
    assert recorded == hashlib.sha256(fake_hub.files["model.safetensors"]).hexdigest()
    assert folder_digest(converted_dir) == before  # the local folder was only read
    config = json.loads(fake_hub.files["config.json"])
    assert config["auto_map"] == {"AutoConfig": "configuration_smolite.SmoliteConfig", "AutoModel": "modeling_smolite.SmoliteModel",
                                  "AutoModelForCausalLM": "modeling_smolite.SmoliteForCausalLM"}
    assert json.loads(fake_hub.files["tokenizer_config.json"])["auto_map"]["AutoTokenizer"][0] == "tokenization_smolite.SmoliteTokenizer"
    for name in ("configuration_smolite.py", "modeling_smolite.py", "loss_smolite.py", "tokenizer.json", "chat_template.jinja"):
        assert fake_hub.files[name] == (converted_dir / name).read_bytes()

    card = ModelCard(fake_hub.files["README.md"].decode())
    assert card.data.language == "ko" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation" and "custom_code" in card.data.tags
    assert card.data.license == "apache-2.0"
    for heading in ("## Architecture", "## Intended use", "## Not intended for", "## Usage", "## Provenance"):
        assert heading in card.text
    assert "trust_remote_code=True" in card.text and "apply_chat_template" in card.text
    assert "| hidden size | 64 |" in card.text and "smolite_tiny.weights.h5" in card.text

    # what was sent loads where smolite_hf cannot be imported, and computes the same thing
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    for name, content in fake_hub.files.items():
        (uploaded / name).write_bytes(content)
    script = textwrap.dedent("""
        import sys, json
        sys.modules["smolite_hf"] = None
        import numpy as np, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": "안녕하세요"}], add_generation_prompt=True, return_tensors="pt")
        with torch.no_grad():
            np.save(sys.argv[2], model(**inputs).logits.numpy())
        print(json.dumps(inputs["input_ids"][0].tolist()))
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script, str(uploaded), str(tmp_path / "logits.npy")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    assert ids == tokenizer("<start> 안녕하세요 <sep>")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(converted_dir)
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), model(torch.tensor([ids])).logits.numpy(), atol=1e-6)


def test_the_card_reports_training_when_known(fake_hub, tmp_path):
    from smolite_hf.training import train

    from .conftest import keras_reference_file

    run = train(tmp_path / "run", keras_reference_file("conversations.jsonl"), size="tiny", vocab_size=350,
                batch_size=4, max_steps=2, disable_tqdm=True)
    push_model(run.output_dir, "someone/trained")
    card = ModelCard(fake_hub.files["README.md"].decode())
    assert "## Training" in card.text and "masked_accuracy" in card.text and "## Provenance" not in card.text


def test_a_failed_upload_says_what_to_check_and_changes_nothing(monkeypatch, converted_dir):
    monkeypatch.setattr(transformers_hub, "_hf_api", FakeHubApi(fail=ConnectionError("network is unreachable")))
    before = folder_digest(converted_dir)
    with pytest.raises(SmolitePushError, match="could not upload .* 'someone/x': ConnectionError: network is unreachable. Check your token") as caught:
        push_model(converted_dir, "someone/x")
    assert "`hf auth login`" in str(caught.value) and "huggingface-cli" not in str(caught.value)  # today's login command
    assert folder_digest(converted_dir) == before


def test_push_command_reports_failure_cleanly(converted_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "smolite_hf", "push", str(converted_dir), "--repo-id", "someone/x"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "could not upload" in done.stderr and "Traceback" not in done.stderr


def test_model_and_tokenizer_push_to_hub_send_the_remote_code_files(fake_hub, converted_dir):
    model = AutoModelForCausalLM.from_pretrained(converted_dir)
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    model.push_to_hub("someone/direct")
    tokenizer.push_to_hub("someone/direct")
    assert {"config.json", "configuration_smolite.py", "modeling_smolite.py", "loss_smolite.py", "model.safetensors",
            "generation_config.json",
            "tokenizer.json", "tokenizer_config.json", "tokenization_smolite.py", "chat_template.jinja"} <= set(fake_hub.files)
