"""Training Smolite with the `transformers.Trainer`: the function behind `smolite train`.

```python
from smolite_hf.training import train
result = train("runs/my-smolite", size="mini", epochs=10)   # the built-in Korean conversations
print(result.metrics)
```

Every option is declared once, in three dataclasses that `HfArgumentParser` reads (as transformers'
`examples/pytorch/language-modeling/run_clm.py` does): `SmoliteModelArguments` (which model, tokenizer and adapters),
`SmoliteDataArguments` (which conversations) and `SmoliteTrainingArguments`, a `TrainingArguments` whose defaults are
the seed's recipe: Adam (no weight decay) with learning rate 1e-4 (constant), betas (0.9, 0.95), epsilon 1e-8,
gradients clipped to a global norm of 1.0 (Keras clipped each tensor on its own), batch 64, one epoch, the model's
own label-smoothed loss (ε = 0.1). `smolite train --help`, `train(**options)` and the classes share those defaults and
help texts; `train()` takes the fields by name or by their command-line names (`epochs`, `batch_size`, `config`).

`train_with_arguments` runs the named steps: `prepare_output_dir`, `read_training_data`, `prepare_tokenizer`,
`prepare_model`, `prepare_datasets`, `resolve_schedule`, `smolite_trainer`, `save_final_model`.

`TrainingArguments.label_smoothing_factor` must stay 0: for a model outside transformers' own mapping the Trainer
applies it to unshifted labels, silently training the model to copy its input; `LabelSmoothingGuard` refuses it.
"""

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from .configuration_smolite import SIZE_ALIASES, SIZE_PRESETS, SmoliteConfig
from .data import BuildReport, builtin_data_path, load_conversation_dataset, read_conversation_data, split_conversations
from .folders import (
    SAVING_MARKER,
    WeightChecksumCallback,
    check_model_folder,
    last_complete_checkpoint,
    load_model,
    load_tokenizer,
    replace_folder_contents,
)
from .generation import smolite_generation_config
from .memory import keep_freed_memory  # re-exported: `training.keep_freed_memory` came first
from .metrics import compute_metrics, make_preprocess_logits_for_metrics
from .modeling_smolite import SmoliteForCausalLM
from .tokenization_smolite import SmoliteTokenizer


def _sizes_help() -> str:
    sizes = ", ".join(f"{name} (hidden {p['hidden_size']}, {p['num_hidden_layers']} layers)" for name, p in SIZE_PRESETS.items())
    aliases = ", ".join(f"{alias!r} is {name!r}" for alias, name in SIZE_ALIASES.items())
    return f"size preset of a model from scratch: {sizes}; small is the released Small ({aliases})"


@dataclass
class SmoliteModelArguments:
    """Which model is trained: from scratch (a size preset or a config file) or fine-tuned, and with which tokenizer."""

    _argument_group_name = "model"

    size: str = field(
        default="small",
        metadata={"choices": [*SIZE_PRESETS, *SIZE_ALIASES], "metavar": "{" + ",".join(SIZE_PRESETS) + "}",
                  "help": _sizes_help()},
    )
    config_file: str | None = field(
        default=None,
        metadata={"aliases": ["--config"], "metavar": "FILE", "help": "a JSON file of SmoliteConfig fields (instead of --size)"},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"metavar": "FIELD=VALUE,...", "help": "SmoliteConfig fields changed in a model from scratch, as in "
                  "transformers' run_clm.py: e.g. hidden_dropout=0,label_smoothing=0.05"},
    )
    from_pretrained: str | None = field(
        default=None, metadata={"metavar": "DIR", "help": "fine-tune this model folder (or Hub id)"}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"metavar": "DIR_OR_MODEL", "help": "a tokenizer folder or an original SentencePiece .model "
                  "(default: that of --from-pretrained, else one trained on the data)"},
    )
    vocab_size: int = field(default=1500, metadata={"help": "pieces of a tokenizer trained on the data"})
    max_length: int | None = field(
        default=None,
        metadata={"metavar": "N", "help": "the window of a model from scratch (default: SmoliteConfig's "
                  f"max_position_embeddings, {SmoliteConfig().max_position_embeddings})"},
    )
    allow_pickle: bool = field(
        default=False, metadata={"help": "load pytorch_model.bin (pickle) weights; only for files you trust"}
    )
    lora: bool = field(
        default=False,
        metadata={"help": "LoRA (PEFT): train adapters on --from-pretrained instead of all weights (needs peft)"},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA adapter rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA adapter scale numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA adapters' input"})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj",
        metadata={"help": "comma-separated modules that get LoRA adapters (the attention projections; also "
                  "gate_proj, up_proj, down_proj, adapter.down, adapter.up)"},
    )

    @property
    def lora_modules(self) -> list[str]:
        """`lora_target_modules` as a list (a comma-separated string, or in Python any sequence of names)."""
        modules = self.lora_target_modules
        return modules.split(",") if isinstance(modules, str) else list(modules)


@dataclass
class SmoliteDataArguments:
    """Which conversations are trained on and evaluated (`smolite_hf.data` reads and encodes them)."""

    _argument_group_name = "data"

    data: list[str] | None = field(
        default=None,
        metadata={"metavar": "FILE", "help": "conversation files (JSON Lines, ShareGPT or messages format; in Python "
                  "also a datasets.Dataset); default: the built-in Korean conversations"},
    )
    eval_data: list[str] | None = field(
        default=None, metadata={"metavar": "FILE", "help": "evaluation files (default: hold out --eval-fraction)"}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"metavar": "F", "help": "share of the conversations held out for evaluation"}
    )
    skip_bad_lines: bool = field(default=False, metadata={"help": "count and skip malformed lines"})
    context_pairs: int = field(
        default=0,
        metadata={"metavar": "N", "help": "earlier human -> gpt pairs of a conversation put before each pair as context, "
                  "as far as the window allows (0: each pair alone, as the original)"},
    )


@dataclass
class SmoliteTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the seed's recipe and `smolite train`'s run settings as defaults.

    Adam without weight decay (`adamw_torch_fused`, transformers' own default: one kernel per step, 28 ms against
    112 ms unfused at the seed size on the AMD kind, `benchmarks/bench_step_settings.py`), learning rate 1e-4 constant, betas 0.9/0.95, epsilon
    1e-8, clipping to a global norm of 1.0, batch 64 (evaluation too, unless given), one epoch; a checkpoint and an evaluation every
    quarter of the run, the last two checkpoints kept, a log line every 10 steps, `data_seed` = `seed`, the CPU where
    there is no CUDA. `resume` and `overwrite` say what to do with an output folder that holds an earlier run.

    ```python
    >>> args = SmoliteTrainingArguments(output_dir="runs/x", max_steps=100)
    >>> args.learning_rate, args.adam_beta2, args.per_device_eval_batch_size
    (0.0001, 0.95, 64)
    ```
    """

    _argument_group_name = "training (transformers.TrainingArguments with the seed's recipe as defaults)"

    output_dir: str = field(metadata={"metavar": "DIR", "help": "the run folder: checkpoints, then the final model"})
    num_train_epochs: float = field(default=1.0, metadata={"aliases": ["--epochs"], "help": "passes over the data"})
    per_device_train_batch_size: int = field(
        default=64, metadata={"aliases": ["--batch-size"], "help": "examples per batch (per process)"}
    )
    per_device_eval_batch_size: int | None = field(
        default=None, metadata={"help": "examples per evaluation batch (default: the training batch size)"}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam's learning rate"})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam's beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "Adam's beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam's epsilon"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (the seed: none)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip gradients to this global norm"})
    optim: OptimizerNames | str = field(
        default="adamw_torch_fused", metadata={"help": "the optimizer (adamw_torch: the same without the fused kernel)"}
    )
    lr_scheduler_type: SchedulerType | str = field(default="constant", metadata={"help": "the learning-rate schedule"})
    eval_strategy: IntervalStrategy | str = field(
        default="steps", metadata={"help": "when to evaluate (none when there is no evaluation data)"}
    )
    eval_steps: float | None = field(
        default=None, metadata={"help": "evaluate every N steps, or a fraction of the run below 1 (default: --save-steps)"}
    )
    save_steps: float = field(
        default=0.25,
        metadata={"help": "write a checkpoint every N steps, or every such fraction of the run (below 1: rounded "
                  "down, at least one step)"},
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    logging_steps: float = field(default=10, metadata={"help": "log the loss every N steps"})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "recompute activations in the backward pass to save memory (= --activation-checkpointing)",
                  "nargs": "?", "const": True},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 autocast (float32 weights and optimizer); default: on when training on a CPU that "
                  "computes bfloat16 natively (avx512_bf16 or AMX), off elsewhere; --bf16 false for float32",
                  "nargs": "?", "const": True},
    )
    resume: bool = field(default=False, metadata={"help": "continue from the latest complete checkpoint in DIR"})
    overwrite: bool = field(default=False, metadata={"help": "start again in a DIR that holds an earlier run"})

    def __post_init__(self):
        if self.resume_from_checkpoint is not None:
            raise ValueError(
                f"resume_from_checkpoint={self.resume_from_checkpoint!r}: smolite train resumes with --resume, from the "
                "latest complete checkpoint in the output folder."
            )
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.eval_steps is None:
            self.eval_steps = self.save_steps
        if self.data_seed is None:
            self.data_seed = self.seed
        if not torch.cuda.is_available():
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = self.use_cpu and cpu_computes_bfloat16() is not None
        if self.activation_checkpointing is None and self.gradient_checkpointing is not None:
            self.activation_checkpointing = self.gradient_checkpointing  # our name for it, without the deprecation
        super().__post_init__()


TRAIN_ARGUMENTS = (SmoliteModelArguments, SmoliteDataArguments, SmoliteTrainingArguments)


def cpu_computes_bfloat16() -> str | None:
    """The instructions with which this CPU multiplies bfloat16 natively (`"AMX"`, `"avx512_bf16"`), or `None`.

    Where it does, oneDNN runs bfloat16 matrix products at about twice (AVX-512 BF16) to six times (AMX) the float32
    speed of torch's MKL path, so `smolite train` trains under bfloat16 autocast there by default; elsewhere bfloat16
    is emulated and slower than float32."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return None


def precision_summary(args: TrainingArguments) -> str:
    """One line on the precision a run trains in and why, for the start of `smolite train`."""
    if not args.bf16:
        return "float32" + (" (--bf16 for bfloat16 autocast)" if args.use_cpu and cpu_computes_bfloat16() else "")
    native = cpu_computes_bfloat16() if args.use_cpu else None
    reason = f", which this CPU computes natively ({native}); --bf16 false for float32" if native else ""
    return f"bfloat16 autocast with float32 weights and optimizer{reason}"


def option_names() -> dict[str, str]:
    """Every name `train()` accepts -> its field: the field names, and the command-line names (`--epochs`: `epochs`)."""
    names = {}
    for argument_class in TRAIN_ARGUMENTS:
        for f in dataclasses.fields(argument_class):
            if f.init:
                names[f.name] = f.name
                for alias in f.metadata.get("aliases", []):
                    names[alias.lstrip("-").replace("-", "_")] = f.name
    return names


def parse_train_options(**options) -> tuple[SmoliteModelArguments, SmoliteDataArguments, SmoliteTrainingArguments]:
    """The three argument dataclasses from keyword options (field names or command-line names); an unknown name or
    two names for one option raise `TypeError`."""
    names, fields = option_names(), {}
    for key, value in options.items():
        if key not in names:
            raise TypeError(
                f"train() got an unknown option {key!r}; options are the fields of SmoliteModelArguments, "
                "SmoliteDataArguments and SmoliteTrainingArguments, or their command-line names (epochs, batch_size)."
            )
        if names[key] in fields:
            raise TypeError(f"train() got {names[key]!r} twice (as {key!r} too).")
        fields[names[key]] = value
    return HfArgumentParser(TRAIN_ARGUMENTS).parse_dict(fields)


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


class SmoliteTrainer(Trainer):
    """`Trainer` that knows Smolite's tied head when it resumes.

    A checkpoint holds the embedding once (`lm_head.weight` is tied to `model.embed_tokens.weight`, in
    `_tied_weights_keys`); the Trainer only recognises keys in the older `_keys_to_ignore_on_save` and so warned
    "There were missing keys in the checkpoint model loaded: ['lm_head.weight']" on every resume. Tied keys are
    re-tied here and any other missing key is still reported."""

    def _issue_warnings_after_load(self, load_result) -> None:
        model = self.accelerator.unwrap_model(self.model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        tied = set(getattr(base, "_tied_weights_keys", None) or {}) if base.config.tie_word_embeddings else set()
        missing = [key for key in load_result.missing_keys if key.removeprefix("base_model.model.") not in tied]
        if len(missing) < len(load_result.missing_keys):
            base.tie_weights()
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


def smolite_trainer(model, args: TrainingArguments, tokenizer, train_dataset=None, eval_dataset=None, callbacks=()):
    """A `SmoliteTrainer` set up for Smolite: dynamic padding, the seed's masked metrics, `LabelSmoothingGuard`, and
    `WeightChecksumCallback` (each checkpoint's `checksums.json`, which `--resume` verifies)."""
    return SmoliteTrainer(
        model=model,
        args=args,
        data_collator=smolite_collator(tokenizer),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(model.config.label_smoothing),
        callbacks=[LabelSmoothingGuard(), WeightChecksumCallback(), *callbacks],
    )


# ------------------------------------------------------------------------------------------------- the steps


def prepare_output_dir(args: SmoliteTrainingArguments) -> Path:
    """The run folder; an earlier run in it is refused unless `resume` (kept) or `overwrite` (its checkpoints and
    report deleted)."""
    output_dir = Path(args.output_dir)
    previous = sorted(output_dir.glob("checkpoint-*")) + [p for p in (output_dir / "training_report.json",) if p.exists()]
    if previous and not args.resume:
        if not args.overwrite:
            raise ValueError(
                f"{output_dir}: holds an earlier run ({previous[0].name}); pass --resume to continue it or "
                "--overwrite to start again."
            )
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return output_dir


def read_training_data(data_args: SmoliteDataArguments, seed: int, report_to_stdout: bool = False):
    """`(train_conversations, eval_conversations, file_reports, eval_split)`: `eval_data`; for the built-in data its
    fixed test split; otherwise `eval_fraction` of the conversations held out (by conversation, reproducibly).
    `eval_split` says in words which of these it was. With `report_to_stdout`, lines skipped by `skip_bad_lines` are
    counted per file and the first few named (file, line, error)."""
    eval_data = data_args.eval_data
    if data_args.data is None and eval_data is None:
        eval_data = [str(builtin_data_path("test"))]
    conversations, reports = read_conversation_data(data_args.data, skip_bad_lines=data_args.skip_bad_lines)
    file_reports = [{"file": name, **report.as_dict()} for name, report in reports.items()]
    if eval_data is not None:
        eval_conversations, eval_reports = read_conversation_data(eval_data, skip_bad_lines=data_args.skip_bad_lines)
        reports = {**reports, **eval_reports}
    if report_to_stdout:
        for name, report in reports.items():
            if summary := report.skipped_summary(name):
                print(f"smolite train: {summary}")
    if eval_data is not None:
        builtin = data_args.eval_data is None
        split = f"the built-in test split ({eval_data[0]})" if builtin else f"the evaluation files {', '.join(map(str, eval_data))}"
        return conversations, eval_conversations, file_reports, split
    train, held_out = split_conversations(conversations, data_args.eval_fraction, seed)
    return train, held_out, file_reports, f"{data_args.eval_fraction:g} of the conversations held out (seed {seed})"


def prepare_tokenizer(model_args: SmoliteModelArguments, args: SmoliteTrainingArguments, train_conversations):
    """The tokenizer, saved in the run folder: the resumed run's, `tokenizer`, that of `from_pretrained`, or one
    trained on the training conversations with `vocab_size` pieces.

    Under torchrun / accelerate launch the main process makes (and saves) it first, the others load it: every process
    must train with the same vocabulary, and tokenizers' Unigram trainer is not reproducible."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    is_main = args.process_index == 0
    with args.main_process_first(local=False, desc="the tokenizer"):
        if (args.resume or not is_main) and (output_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(output_dir)  # the run being resumed (or the main process) made it
        elif model_args.tokenizer is not None:
            if str(model_args.tokenizer).endswith(".model"):
                tokenizer = SmoliteTokenizer.from_sentencepiece(model_args.tokenizer)
            else:
                tokenizer = load_tokenizer(model_args.tokenizer)
        elif model_args.from_pretrained is not None:
            tokenizer = load_tokenizer(model_args.from_pretrained)
        else:
            texts = [text for conversation in train_conversations for _, text in conversation.messages]
            tokenizer = SmoliteTokenizer.train(texts, vocab_size=model_args.vocab_size)
        if is_main:
            tokenizer.save_pretrained(output_dir)
    return tokenizer


def prepare_model(model_args: SmoliteModelArguments, tokenizer, seed: int):
    """The model to train: `from_pretrained`, or a new one from `config_file` or the `size` preset with the
    tokenizer's vocabulary and special ids (initialised after `set_seed(seed)`); wrapped in LoRA adapters with `lora`."""
    if model_args.from_pretrained is not None:
        if model_args.config_overrides:
            raise ValueError(f"--config-overrides {model_args.config_overrides}: it changes a model trained from scratch; "
                             f"--from-pretrained {model_args.from_pretrained} keeps its own configuration.")
        model = load_model(model_args.from_pretrained, allow_pickle=model_args.allow_pickle)
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} pieces but the model in {model_args.from_pretrained} only "
                f"{model.config.vocab_size}."
            )
    else:
        fields = dict(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            unk_token_id=tokenizer.unk_token_id,
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if model_args.max_length is not None:
            fields["max_position_embeddings"] = model_args.max_length
        if model_args.config_file is not None:
            config = SmoliteConfig(**{**json.loads(Path(model_args.config_file).read_text(encoding="utf-8")), **fields})
        else:
            config = SmoliteConfig.from_size(model_args.size, **fields)
        if model_args.config_overrides:
            apply_config_overrides(config, model_args.config_overrides)
        set_seed(seed)
        model = SmoliteForCausalLM(config)
    if model_args.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(task_type="CAUSAL_LM", r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                       lora_dropout=model_args.lora_dropout, target_modules=model_args.lora_modules),
        )
    return model


def apply_config_overrides(config: SmoliteConfig, overrides: str) -> None:
    """`FIELD=VALUE,...` applied to `config` (`PretrainedConfig.update_from_string`), with errors naming the option."""
    for item in overrides.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config-overrides {overrides}: {item!r} is not FIELD=VALUE.")
        if not hasattr(config, key.strip()):
            raise ValueError(f"--config-overrides {overrides}: {key.strip()!r} is not a SmoliteConfig field.")
        try:
            config.update_from_string(f"{key.strip()}={value.strip()}")
        except ValueError as err:
            raise ValueError(f"--config-overrides {overrides}: {key.strip()}={value.strip()}: {err}") from None


def prepare_datasets(train_conversations, eval_conversations, tokenizer, window: int, where, context_pairs: int = 0):
    """`(train_dataset, eval_dataset or None, {"train": report, "eval": report})` by `load_conversation_dataset`."""
    train_dataset, train_report = load_conversation_dataset(train_conversations, tokenizer, max_length=window,
                                                            allow_empty=True, context_pairs=context_pairs)
    eval_dataset, eval_report = load_conversation_dataset(eval_conversations, tokenizer, max_length=window,
                                                          allow_empty=True, context_pairs=context_pairs)
    if not len(train_dataset):
        raise ValueError(f"no training example in {where}: {train_report}")
    reports = {"train": train_report.as_dict(), "eval": eval_report.as_dict()}
    return train_dataset, eval_dataset if len(eval_dataset) else None, reports


def resolve_schedule(args: SmoliteTrainingArguments, train_examples: int) -> None:
    """`save_steps` and `eval_steps` given as fractions of the run (below 1) become step counts, rounded down (at
    least 1): a quarter of an 8-step run is 2 steps, of a 6-step run 1. (The Trainer would round up.) Returns the
    run's total number of optimizer steps."""
    steps_per_epoch = max(1, -(-train_examples // (args.per_device_train_batch_size * args.gradient_accumulation_steps)))
    total_steps = args.max_steps if args.max_steps > 0 else max(1, int(steps_per_epoch * args.num_train_epochs))
    for name in ("save_steps", "eval_steps"):
        value = getattr(args, name)
        if 0 < value < 1:
            setattr(args, name, max(1, int(total_steps * value)))
    return total_steps


def save_final_model(trainer: Trainer, tokenizer, output_dir: Path, report: dict) -> None:
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


def _build_report(report: dict) -> BuildReport:
    return BuildReport(**{**report, "skipped": Counter(report["skipped"])})


def _checkpoint_step(checkpoint: Path) -> int:
    """The optimizer steps done at a (complete) checkpoint, from its `trainer_state.json`."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    data_report: dict
    train_seconds: float
    trained: bool = True  # False: `resume` found the run already finished, and `metrics` are that run's


def train_with_arguments(model_args: SmoliteModelArguments, data_args: SmoliteDataArguments,
                         args: SmoliteTrainingArguments, callbacks=None) -> TrainResult:
    """`train` from the three argument dataclasses (what `smolite train` parses); see the module doc for the steps."""
    if model_args.lora and model_args.from_pretrained is None:
        raise ValueError("--lora fine-tunes adapters on a trained model: give --from-pretrained MODEL_DIR.")
    started = time.monotonic()
    pretrained = model_args.from_pretrained
    if pretrained is not None and Path(pretrained).exists():  # refuse a damaged folder before any work
        check_model_folder(pretrained, tokenizer=model_args.tokenizer is None, allow_pickle=model_args.allow_pickle)
    output_dir = prepare_output_dir(args)
    is_main = args.process_index == 0
    say = print if is_main else (lambda *_: None)
    train_conversations, eval_conversations, file_reports, eval_split = read_training_data(
        data_args, args.seed, report_to_stdout=is_main)

    tokenizer = prepare_tokenizer(model_args, args, train_conversations)
    model = prepare_model(model_args, tokenizer, args.seed)
    base_model = model.get_base_model() if model_args.lora else model
    window = base_model.config.max_position_embeddings
    tokenizer.model_max_length = window

    where = [row["file"] for row in file_reports] or "the dataset"
    train_dataset, eval_dataset, data_report = prepare_datasets(train_conversations, eval_conversations, tokenizer,
                                                                window, where, data_args.context_pairs)
    for part, name in (("train", "training"), ("eval", "evaluation")):  # the data report, as the run starts
        if part == "train" or eval_dataset is not None:
            say(f"smolite train: {name} data: {_build_report(data_report[part])}")
    say(f"smolite train: precision: {precision_summary(args)}")
    total_steps = resolve_schedule(args, len(train_dataset))
    if eval_dataset is None:
        args.eval_strategy = IntervalStrategy.NO
    trainer = smolite_trainer(model, args, tokenizer, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              callbacks=callbacks or ())
    checkpoint = None
    if args.resume:  # the main process removes incomplete checkpoints (with a message) before the others look
        with args.main_process_first(local=False, desc="the checkpoints"):
            checkpoint = last_complete_checkpoint(output_dir, report=say)
        if checkpoint is None:
            say(f"smolite train: no checkpoint in {output_dir} to resume from; starting from the beginning.")
    done_steps = _checkpoint_step(checkpoint) if checkpoint is not None else 0
    report_file = output_dir / "training_report.json"
    final_saved = report_file.is_file() and not (output_dir / SAVING_MARKER).exists() and any(
        (output_dir / name).is_file() for name in ("config.json", "adapter_config.json"))  # a save killed midway: redo
    if checkpoint is not None and done_steps >= total_steps and final_saved:
        say(f"smolite train: nothing left to do: {checkpoint} is step {done_steps} of {total_steps} and the final "
            f"model is in {output_dir}; raise --max-steps or --epochs to train further.")
        previous = json.loads(report_file.read_text(encoding="utf-8"))
        return TrainResult(output_dir, previous["metrics"], previous["data"], time.monotonic() - started, trained=False)
    if checkpoint is not None:
        say(f"smolite train: resuming from {checkpoint} (step {done_steps} of {total_steps}).")
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = trainer.evaluate() if eval_dataset is not None else {}

    base_model.config.use_cache = True  # the Trainer switches the cache off for training
    base_model.generation_config = smolite_generation_config(base_model.config)
    data_report = {"files": file_reports, "eval_split": eval_split, "context_pairs": data_args.context_pairs, **data_report}
    precision = "bfloat16 autocast" if args.bf16 else "float16 autocast" if args.fp16 else "float32"
    elapsed = time.monotonic() - started
    if trainer.is_world_process_zero():
        save_final_model(trainer, tokenizer, output_dir, {"metrics": metrics, "data": data_report, "precision": precision,
                                                            "train_seconds": elapsed})
    trainer.accelerator.wait_for_everyone()  # under torchrun no process returns before the final model is in place
    return TrainResult(output_dir, metrics, data_report, elapsed)


@contextlib.contextmanager
def own_process_group():
    """Destroy, on leaving, a `torch.distributed` process group started inside the block (under torchrun the
    training arguments start one). A process that exits with the group alive can abort in gloo's teardown
    ("terminate called without an active exception") and fail the whole launch; a group the caller started is
    left alone."""
    distributed = torch.distributed.is_available()
    started_before = distributed and torch.distributed.is_initialized()
    try:
        yield
    finally:
        if distributed and not started_before and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train(output_dir: str | os.PathLike, data=None, *, callbacks: list | None = None, **options) -> TrainResult:
    """Train (or fine-tune) Smolite on conversations; write a complete model + tokenizer folder to `output_dir`.

    `options` are the fields of `SmoliteModelArguments`, `SmoliteDataArguments` and `SmoliteTrainingArguments`, by
    name or by their command-line names (`epochs` = `num_train_epochs`, `batch_size` = `per_device_train_batch_size`,
    `config` = `config_file`); their defaults are the seed's recipe. In short:

    `data`: conversation files (JSON Lines, ShareGPT or messages format) or a `datasets.Dataset`; the built-in Korean
    dataset when `None`. `eval_data`: evaluation files; otherwise `eval_fraction` of the conversations is held out. The
    model comes from `from_pretrained` (a folder or Hub id), else from `config_file` (a JSON of `SmoliteConfig`
    fields), else from the `size` preset. The tokenizer comes from `tokenizer` (a folder or an original `.model`),
    else from `from_pretrained`, else is trained on the training conversations with `vocab_size` pieces. Checkpoints
    are written every `save_steps` under `output_dir/checkpoint-N`; `resume=True` continues from the latest complete
    one (a checkpoint the run was killed while writing is removed, with a message). A folder that already holds a run
    is refused unless `resume` or `overwrite` (which deletes that run's checkpoints) is given. The final model is
    moved in by `folders.replace_folder_contents`, so a kill during that save leaves no folder that loads.
    A local `from_pretrained` folder is checked first (`smolite_hf.folders`); pickle weights only with `allow_pickle`.

    `lora=True` (with `from_pretrained`) trains only LoRA adapters (PEFT) of rank `lora_r` on `lora_target_modules`
    and writes an adapter (`adapter_config.json`, `adapter_model.safetensors`) instead of full weights.
    `gradient_checkpointing=True` recomputes activations in the backward pass to save memory. `callbacks` are added
    to the Trainer's.
    """
    with own_process_group():
        model_args, data_args, args = parse_train_options(output_dir=str(output_dir), data=data, **options)
        return train_with_arguments(model_args, data_args, args, callbacks=callbacks)


__all__ = [
    "LabelSmoothingGuard",
    "SmoliteDataArguments",
    "SmoliteModelArguments",
    "SmoliteTrainer",
    "SmoliteTrainingArguments",
    "TRAIN_ARGUMENTS",
    "TrainResult",
    "cpu_computes_bfloat16",
    "keep_freed_memory",
    "option_names",
    "own_process_group",
    "parse_train_options",
    "prepare_datasets",
    "prepare_model",
    "prepare_output_dir",
    "prepare_tokenizer",
    "read_training_data",
    "resolve_schedule",
    "save_final_model",
    "smolite_collator",
    "smolite_trainer",
    "train",
    "train_with_arguments",
]
