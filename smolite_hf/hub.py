"""Publishing a Smolite folder on the Hugging Face Hub with a model card: the function behind `smolite push`.

The upload is one commit holding everything a user without this package needs to load the model with
`trust_remote_code=True`: `config.json` (with `auto_map`), `configuration_smolite.py`, `modeling_smolite.py`,
`loss_smolite.py`, `model.safetensors` with its `checksums.json`, `generation_config.json`, the tokenizer files with
`tokenization_smolite.py` and `chat_template.jinja`, and a generated `README.md` model card. The folder is checked
and loaded once (`smolite_hf.folders`), written out with `save_pretrained` (which copies the source files the
model imports), and is only read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, ModelCard, ModelCardData
from transformers.utils.hub import hf_api

from .folders import load_model, load_tokenizer, write_weight_checksums


class SmolitePushError(OSError):
    """The upload failed (token, network, permissions); nothing local was changed."""


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def model_card(model, tokenizer, model_dir: Path, repo_id: str, license: str = "apache-2.0") -> ModelCard:
    """A model card for `model` with the architecture, usage, and the training or conversion record when known."""
    config = model.config
    training = _read_json(model_dir / "training_report.json")
    conversion = _read_json(model_dir / "conversion_report.json")
    parameters = sum(p.numel() for p in model.parameters())
    data = ModelCardData(
        language="ko",
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["smolite", "custom_code", "korean", "chat", "text-generation"],
    )
    sections = [
        f"# {repo_id.split('/')[-1]}",
        "A Smolite model: a small decoder-only transformer for everyday Korean conversation, packaged for 🤗 "
        "transformers by [smolite_hf](https://github.com/smolite/smolite_hf). It answers one user turn at a time in "
        "the format it was trained on, `<start> {user} <sep> {reply} <end>`.",
        "## Architecture",
        "| | |\n|---|---|\n"
        f"| parameters | {parameters / 1e6:.1f} M |\n"
        f"| vocabulary | {config.vocab_size} (SentencePiece Unigram) |\n"
        f"| hidden size | {config.hidden_size} |\n"
        f"| layers | {config.num_hidden_layers} |\n"
        f"| attention heads | {config.num_attention_heads} (head size {config.head_dim}) |\n"
        f"| feed-forward | SwiGLU, {config.intermediate_size} |\n"
        f"| adapter | {config.adapter_size} (residual, exact GELU, after attention) |\n"
        f"| window | {config.max_position_embeddings} positions |\n"
        "| positions | rotary, interleaved pairs, applied to the normalised input before the query/key projections |\n"
        "| norm | pre-LayerNorm; output head tied to the embedding |",
        "## Intended use",
        "Casual Korean small talk, demonstrations, teaching and experiments with small language models on a CPU. "
        "Replies are short and follow the style of the training conversations.",
        "## Not intended for",
        "Factual questions, advice (medical, legal, financial, safety), decisions about people, or any use where a "
        "wrong or odd reply causes harm: the model is small, knows few facts and is not safety-tuned. It reads only "
        f"the last {config.max_position_embeddings} positions of a conversation.",
        "## Usage",
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        'messages = [{"role": "user", "content": "오늘 날씨 어때?"}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")\n'
        "output = model.generate(**inputs)  # the seed's chat decoding: temperature 0.5, top-p 0.9\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
        "```\n\n"
        "With `pip install smolite_hf`, `import smolite_hf` registers the classes and `trust_remote_code` is not needed; "
        f"`smolite chat {repo_id}` chats in the terminal.",
    ]
    if training:
        metrics = training.get("metrics", {})
        report = training.get("data", {}).get("train", {})
        lines = [f"Trained with `smolite train` on {report.get('used', '?')} conversation pairs"
                 f" in {training.get('train_seconds', 0):.0f} s."]
        if metrics:
            lines.append("Evaluation on held-out conversations (reply tokens only):\n\n| metric | value |\n|---|---|\n" + "\n".join(
                f"| {name[5:]} | {value:.4f} |" for name, value in metrics.items()
                if name in ("eval_loss", "eval_masked_accuracy", "eval_masked_perplexity", "eval_perplexity")))
        sections += ["## Training", "\n\n".join(lines)]
    if conversion:
        sections += [
            "## Provenance",
            f"Converted from the original Keras weights `{conversion['keras_weights']}` "
            f"(sha256 `{conversion['keras_weights_sha256']}`)"
            + (f" and SentencePiece model `{conversion['tokenizer']}`" if conversion.get("tokenizer") else "")
            + f" with `smolite convert`; the converted logits matched an independent NumPy forward pass of the Keras "
            f"weights to {conversion['max_abs_logit_difference']:.1e}.",
        ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def push_model(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
               license: str = "apache-2.0", commit_message: str = "Upload Smolite model") -> str:
    """Upload `model_dir` (model, tokenizer, generated card) to `repo_id` in one commit; returns the repo id."""
    model_dir = Path(model_dir)
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)  # each checks the folder first
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_weight_checksums(staging)
        model_card(model, tokenizer, model_dir, repo_id, license=license).save(staging / "README.md")
        operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)) for path in sorted(staging.iterdir())]
        try:
            repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
            hf_api().create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, token=token)
        except Exception as err:  # huggingface_hub raises HTTP, token, offline and connection errors of many types
            raise SmolitePushError(
                f"could not upload {model_dir} to the Hub repository '{repo_id}': {type(err).__name__}: {err}. Check "
                "your token (`hf auth login` or HF_TOKEN, with write access) and your network; the local "
                "folder was not changed."
            ) from err
    return repo_id


__all__ = ["SmolitePushError", "model_card", "push_model"]
