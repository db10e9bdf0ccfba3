"""Training Smolite with the `transformers.Trainer`: the function behind `smolite train`.

```python
from smolite_hf.training import train
result = train("runs/my-smolite", size="small", epochs=10)   # the built-in Korean conversations
print(result.metrics)
```

The seed's recipe is the default: Adam (no weight decay) with learning rate 1e-4, betas (0.9, 0.95), epsilon 1e-8,
gradients clipped to a global norm of 1.0 (Keras clipped each tensor on its own), batch 64, one epoch, the model's own
label-smoothed loss (ε = 0.1). `TrainingArguments.label_smoothing_factor` must stay 0: for a model outside
transformers' own mapping the Trainer applies it to unshifted labels, silently training the model to copy its input;
`LabelSmoothingGuard` refuses it.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from accelerate import PartialState

from .configuration_smolite import SmoliteConfig
from .data import Conversation, build_examples, read_conversation_files
from .folders import check_model_folder, last_complete_checkpoint, load_model, load_tokenizer, replace_folder_contents
from .generation import smolite_generation_config
from .metrics import compute_metrics, make_preprocess_logits_for_metrics
from .modeling_smolite import SmoliteForCausalLM
from .tokenization_smolite import SmoliteTokenizer

# Model sizes for training from scratch; "seed" is the released Small size (the vocabulary comes from the tokenizer).
SIZES = {
    "seed": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024, adapter_size=64),
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, adapter_size=32),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, adapter_size=16),
}
BUILTIN_DATA = "korean_everyday_chat.jsonl"
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def builtin_data_path() -> Path:
    """The Korean everyday-conversation dataset shipped with the package (see its README for the license)."""
    return Path(str(resources.files("smolite_hf") / "resources" / BUILTIN_DATA))


class LabelSmoothingGuard(TrainerCallback):
    """Refuses `TrainingArguments.label_smoothing_factor > 0`: Smolite smooths inside its own (shifted) loss."""

    def on_init_end(self, args, state, control, **kwargs):
        if args.label_smoothing_factor:
            raise ValueError(
                f"TrainingArguments.label_smoothing_factor={args.label_smoothing_factor}: the Trainer would apply it to "
                "unshifted labels for Smolite (a model outside transformers' own mapping), training it to copy its "
                "input. Set the smoothing in the model config (config.label_smoothing) and leave this at 0."
            )


def smolite_collator(tokenizer) -> DataCollatorForSeq2Seq:
    """Pads each batch to its longest example (on the right, as the original), labels with -100, builds the mask."""
    right_padded = copy.copy(tokenizer)
    right_padded.padding_side = "right"
    return DataCollatorForSeq2Seq(right_padded, label_pad_token_id=-100, padding="longest")


def split_conversations(conversations: list[Conversation], eval_fraction: float, seed: int):
    """A reproducible train/eval split by conversation (turns of one conversation never straddle the split)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(conversations) * eval_fraction)
    if eval_fraction and n_eval == 0 and len(conversations) > 1:
        n_eval = 1
    eval_ids = set(order[:n_eval])
    train_set = [c for i, c in enumerate(conversations) if i not in eval_ids]
    eval_set = [c for i, c in enumerate(conversations) if i in eval_ids]
    return train_set, eval_set


def examples_to_dataset(examples):
    """A `datasets.Dataset` of the `input_ids` and `labels` of `build_examples` output, or `None` when empty."""
    from datasets import Dataset

    if not examples:
        return None
    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]})


def smolite_trainer(model, args: TrainingArguments, tokenizer, train_dataset=None, eval_dataset=None, callbacks=()):
    """A `Trainer` set up for Smolite: dynamic padding, the seed's masked metrics, and `LabelSmoothingGuard`."""
    return Trainer(
        model=model,
        args=args,
        data_collator=smolite_collator(tokenizer),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(model.config.label_smoothing),
        callbacks=[LabelSmoothingGuard(), *callbacks],
    )


def _load_tokenizer(tokenizer, from_pretrained, output_dir: Path, resume: bool):
    if resume and (output_dir / "tokenizer.json").is_file():
        return load_tokenizer(output_dir)  # the run being resumed made it
    if tokenizer is not None:
        if str(tokenizer).endswith(".model"):
            return SmoliteTokenizer.from_sentencepiece(tokenizer)
        return load_tokenizer(tokenizer)
    if from_pretrained is not None:
        return load_tokenizer(from_pretrained)
    return None


def _build_model(from_pretrained, size, config_file, tokenizer, max_length, seed, allow_pickle=False):
    if from_pretrained is not None:
        model = load_model(from_pretrained, allow_pickle=allow_pickle)
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} pieces but the model in {from_pretrained} only "
                f"{model.config.vocab_size}."
            )
        return model
    if config_file is not None:
        fields = json.loads(Path(config_file).read_text(encoding="utf-8"))
    elif size in SIZES:
        fields = dict(SIZES[size])
    else:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)} or give a config file.")
    fields.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if max_length is not None:
        fields["max_position_embeddings"] = max_length
    set_seed(seed)
    return SmoliteForCausalLM(SmoliteConfig(**fields))


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    data_report: dict
    train_seconds: float


def train(
    output_dir: str | os.PathLike,
    data=None,
    *,
    eval_data=None,
    eval_fraction: float = 0.1,
    size: str = "seed",
    config_file: str | os.PathLike | None = None,
    from_pretrained: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int = 1500,
    max_length: int | None = None,
    learning_rate: float = 1e-4,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.95,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float = 1.0,
    batch_size: int = 64,
    gradient_accumulation_steps: int = 1,
    epochs: float = 1.0,
    max_steps: int = -1,
    eval_steps: int | None = None,
    save_steps: int | None = None,
    save_total_limit: int | None = 2,
    logging_steps: int = 10,
    seed: int = 42,
    bf16: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES,
    gradient_checkpointing: bool = False,
    skip_bad_lines: bool = False,
    allow_pickle: bool = False,
    callbacks: list | None = None,
    disable_tqdm: bool | None = None,
) -> TrainResult:
    """Train (or fine-tune) Smolite on conversation files; write a complete model + tokenizer folder to `output_dir`.

    `data`: conversation files (JSON Lines, ShareGPT or messages format); the built-in Korean dataset when `None`.
    `eval_data`: evaluation files; otherwise `eval_fraction` of the conversations is held out. The model comes from
    `from_pretrained` (a folder or Hub id), else from `config_file` (a JSON of `SmoliteConfig` fields), else from the
    `size` preset. The tokenizer comes from `tokenizer` (a folder or an original `.model`), else from
    `from_pretrained`, else is trained on the training conversations with `vocab_size` pieces. Checkpoints are written
    every `save_steps` under `output_dir/checkpoint-N`; `resume=True` continues from the latest complete one (a
    checkpoint the run was killed while writing is removed, with a message). A folder that already holds a run is
    refused unless `resume` or `overwrite` (which deletes that run's checkpoints) is given. The final model is moved
    in by `folders.replace_folder_contents`, so a kill during that save leaves no folder that loads.
    A local `from_pretrained` folder is checked first (`smolite_hf.folders`); pickle weights only with `allow_pickle`.

    `lora=True` (with `from_pretrained`) trains only LoRA adapters (PEFT) of rank `lora_r` on `lora_target_modules`
    and writes an adapter (`adapter_config.json`, `adapter_model.safetensors`) instead of full weights.
    `gradient_checkpointing=True` recomputes activations in the backward pass to save memory.
    """
    if lora and from_pretrained is None:
        raise ValueError("--lora fine-tunes adapters on a trained model: give --from-pretrained MODEL_DIR.")
    started = time.monotonic()
    if from_pretrained is not None and Path(from_pretrained).exists():  # refuse a damaged folder before any work
        check_model_folder(from_pretrained, tokenizer=tokenizer is None, allow_pickle=allow_pickle)
    output_dir = Path(output_dir)
    previous = sorted(output_dir.glob("checkpoint-*")) + [p for p in (output_dir / "training_report.json",) if p.exists()]
    if previous and not resume:
        if not overwrite:
            raise ValueError(
                f"{output_dir}: holds an earlier run ({previous[0].name}); pass --resume to continue it or "
                "--overwrite to start again."
            )
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    conversations, reports = read_conversation_files(data or builtin_data_path(), skip_bad_lines=skip_bad_lines)
    files = [str(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data or [builtin_data_path()])]
    read_reports = [{"file": f, "lines": r.lines, "skipped_lines": dict(r.skipped_lines)} for f, r in zip(files, reports)]
    if eval_data is not None:
        train_conversations = conversations
        eval_conversations = read_conversation_files(eval_data, skip_bad_lines=skip_bad_lines)[0]
    else:
        train_conversations, eval_conversations = split_conversations(conversations, eval_fraction, seed)

    output_dir.mkdir(parents=True, exist_ok=True)
    state = PartialState(cpu=not torch.cuda.is_available())
    # Under torchrun / accelerate launch the main process makes (and saves) the tokenizer first, the others load it:
    # every process must train with the same vocabulary, and tokenizers' Unigram trainer is not reproducible.
    with state.main_process_first():
        smolite_tokenizer = _load_tokenizer(tokenizer, from_pretrained, output_dir, resume or not state.is_main_process)
        if smolite_tokenizer is None:
            texts = [text for conversation in train_conversations for _, text in conversation.messages]
            smolite_tokenizer = SmoliteTokenizer.train(texts, vocab_size=vocab_size)
        if state.is_main_process:
            smolite_tokenizer.save_pretrained(output_dir)
    model = _build_model(from_pretrained, size, config_file, smolite_tokenizer, max_length, seed, allow_pickle)
    window = model.config.max_position_embeddings
    smolite_tokenizer.model_max_length = window
    generation_config = smolite_generation_config(model.config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                       target_modules=list(lora_target_modules)),
        )

    train_examples, train_report = build_examples(train_conversations, smolite_tokenizer, max_length=window)
    eval_examples, eval_report = build_examples(eval_conversations, smolite_tokenizer, max_length=window)
    if not train_examples:
        raise ValueError(f"no training example in {files}: {train_report}")

    steps_per_epoch = max(1, -(-len(train_examples) // (batch_size * gradient_accumulation_steps)))
    total_steps = max_steps if max_steps > 0 else max(1, int(steps_per_epoch * epochs))
    save_steps = save_steps or max(1, total_steps // 4)
    eval_steps = eval_steps or save_steps
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        adam_epsilon=adam_epsilon,
        weight_decay=0.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        max_grad_norm=max_grad_norm,
        num_train_epochs=epochs,
        max_steps=max_steps,
        eval_strategy="steps" if eval_examples else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=disable_tqdm,
        activation_checkpointing=gradient_checkpointing,
    )
    trainer = smolite_trainer(
        model,
        args,
        smolite_tokenizer,
        train_dataset=examples_to_dataset(train_examples),
        eval_dataset=examples_to_dataset(eval_examples),
        callbacks=callbacks or (),
    )
    checkpoint = None
    if resume:  # the main process removes incomplete checkpoints (with a message) before the others look
        with state.main_process_first():
            checkpoint = last_complete_checkpoint(output_dir, report=print if state.is_main_process else lambda _: None)
    if resume and checkpoint is None:
        print(f"smolite train: no checkpoint in {output_dir} to resume from; starting from the beginning.")
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = trainer.evaluate() if eval_examples else {}

    base_model = model.get_base_model() if lora else model
    base_model.config.use_cache = True  # the Trainer switches the cache off for training
    base_model.generation_config = generation_config
    data_report = {"files": read_reports, "train": train_report.as_dict(), "eval": eval_report.as_dict()}
    elapsed = time.monotonic() - started
    if trainer.is_world_process_zero():
        _save_final(trainer, smolite_tokenizer, output_dir, {"metrics": metrics, "data": data_report, "train_seconds": elapsed})
    return TrainResult(output_dir, metrics, data_report, elapsed)


def _save_final(trainer: Trainer, tokenizer, output_dir: Path, report: dict) -> None:
    """Write the final model, tokenizer and report beside the checkpoints: everything into a staging folder first,
    then moved in by `replace_folder_contents` (a kill midway leaves a folder no loader accepts, never a mix)."""
    for old in output_dir.glob(".final-*"):  # the staging folder of a save that was killed
        shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        trainer.model.save_pretrained(staging)  # full weights, or only the adapter for a PEFT model
        if not (staging / "generation_config.json").exists():
            trainer.model.get_base_model().generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        replace_folder_contents(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "SIZES",
    "LabelSmoothingGuard",
    "TrainResult",
    "builtin_data_path",
    "examples_to_dataset",
    "smolite_collator",
    "smolite_trainer",
    "split_conversations",
    "train",
]
