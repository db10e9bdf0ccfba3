"""`smolite train` / `smolite_hf.training.train`: a tiny end-to-end run, resume equivalence, guards, commands."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TrainerCallback, TrainingArguments

from smolite_hf import SmoliteForCausalLM, SmoliteTokenizer
from smolite_hf.folders import verify_weight_checksums
from smolite_hf.training import LabelSmoothingGuard, train

from .conftest import keras_reference_file

TINY = dict(size="tiny", vocab_size=350, batch_size=4, eval_fraction=0.2, disable_tqdm=True, logging_steps=50)


@pytest.fixture(scope="module")
def data():
    return keras_reference_file("conversations.jsonl")


class StopAt(TrainerCallback):
    """Ends training after `step`, as an interrupted run would (its last checkpoint is that step)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_two_runs_from_scratch_with_the_same_seed_give_the_same_tokenizer_and_weights(tmp_path, data):
    """Each run trains its own tokenizer (SentencePiece's trainer, deterministic) and then the model."""
    runs = [train(tmp_path / name, data, max_steps=3, context_pairs=1, **TINY).output_dir for name in ("a", "b")]
    for name in ("tokenizer.json", "model.safetensors"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    other_seed = train(tmp_path / "c", data, max_steps=3, seed=7, **TINY).output_dir
    assert (other_seed / "model.safetensors").read_bytes() != (runs[0] / "model.safetensors").read_bytes()


def test_end_to_end_run_lowers_the_eval_loss_and_writes_a_complete_folder(tmp_path, data):
    first = train(tmp_path / "short", data, max_steps=1, **TINY)
    longer = train(tmp_path / "long", data, max_steps=40, learning_rate=3e-3, **TINY)
    assert longer.metrics["eval_loss"] < first.metrics["eval_loss"] - 0.3
    for name in ("masked_accuracy", "masked_perplexity", "perplexity"):
        assert f"eval_{name}" in longer.metrics
    folder = longer.output_dir
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model) is SmoliteForCausalLM and type(tokenizer) is SmoliteTokenizer
    assert model.config.vocab_size == len(tokenizer) == 350 and model.config.use_cache is True
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.max_position_embeddings == 100
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.eos_token_id == tokenizer.eos_token_id and generation.do_sample
    report = json.loads((folder / "training_report.json").read_text())
    assert report["data"]["train"]["used"] + report["data"]["eval"]["used"] == 19


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, data):
    settings = dict(max_steps=6, save_steps=3, eval_steps=100, **TINY)
    uninterrupted = train(tmp_path / "a", data, **settings)
    # tokenizers' Unigram trainer is not reproducible run to run, so the second run uses the first run's tokenizer;
    # a resumed run reuses the tokenizer its own first part saved
    same_tokenizer = dict(settings, tokenizer=str(uninterrupted.output_dir))
    train(tmp_path / "b", data, callbacks=[StopAt(3)], **same_tokenizer)
    assert (tmp_path / "b" / "checkpoint-3").is_dir() and not (tmp_path / "b" / "checkpoint-6").exists()
    assert (tmp_path / "b" / "checkpoint-3" / "checksums.json").is_file()  # written by WeightChecksumCallback
    verify_weight_checksums(tmp_path / "b" / "checkpoint-3")
    resumed = train(tmp_path / "b", data, resume=True, **settings)
    a = load_file(uninterrupted.output_dir / "model.safetensors")
    b = load_file(resumed.output_dir / "model.safetensors")
    stopped = load_file(tmp_path / "b" / "checkpoint-3" / "model.safetensors")
    assert any(not torch.equal(stopped[k], a[k]) for k in a)  # the resumed run really trained further
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, data):
    config = tmp_path / "no_dropout.json"  # dropout masks would differ between one batch of 8 and two of 4
    config.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "intermediate_size": 128, "adapter_size": 16, "hidden_dropout": 0.0}))
    options = {**TINY, "batch_size": 8, "eval_fraction": 0.0, "config_file": config, "bf16": False,  # float32 sums
               "tokenizer": str(keras_reference_file("tokenizer.model"))}
    big = train(tmp_path / "big", data, max_steps=2, **options)
    options["batch_size"] = 4
    accumulated = train(tmp_path / "acc", data, max_steps=2, gradient_accumulation_steps=2, **options)
    a, b = load_file(big.output_dir / "model.safetensors"), load_file(accumulated.output_dir / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-6, rtol=1e-4, msg=name)


def test_label_smoothing_factor_is_refused(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to="none")
    with pytest.raises(ValueError, match="label_smoothing_factor=0.1: the Trainer would apply it to unshifted labels"):
        LabelSmoothingGuard().on_init_end(args, None, None)


def run(*args):
    return subprocess.run([sys.executable, "-m", "smolite_hf", *args], capture_output=True, text=True)


def test_train_and_evaluate_commands(tmp_path, data):
    done = run("train", "--data", str(data), "--output-dir", str(tmp_path / "run"), "--size", "tiny",
               "--vocab-size", "350", "--batch-size", "4", "--max-steps", "3", "--eval-fraction", "0.2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Trained on" in done.stdout and "masked_accuracy" in done.stdout
    assert "Evaluated on 0.2 of the conversations held out (seed 42):" in done.stdout
    report = json.loads((tmp_path / "run" / "training_report.json").read_text())
    assert report["data"]["eval_split"] == "0.2 of the conversations held out (seed 42)"
    evaluated = run("evaluate", str(tmp_path / "run"), "--data", str(data), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    assert set(result["metrics"]) == {"loss", "masked_accuracy", "masked_perplexity", "perplexity", "targets"}
    assert result["data"]["used"] == 19 and result["metrics"]["targets"] > 100
    readable = run("evaluate", str(tmp_path / "run"), "--data", str(data))
    assert "masked_perplexity" in readable.stdout and readable.returncode == 0
    builtin = run("evaluate", str(tmp_path / "run"), "--json")  # no --data: the built-in test split, named
    assert builtin.returncode == 0, builtin.stderr[-3000:]
    assert json.loads(builtin.stdout)["data"]["files"][0].endswith("korean_everyday_chat.test.jsonl")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\n{oops\n', encoding="utf-8")
    failed = run("train", "--data", str(bad), "--output-dir", str(tmp_path / "run2"), "--size", "tiny")
    assert failed.returncode == 2 and "bad.jsonl, line 2: not valid JSON" in failed.stderr


def test_an_earlier_run_is_not_silently_mixed_in(tmp_path, data):
    train(tmp_path / "run", data, max_steps=2, save_steps=1, **TINY)
    with pytest.raises(ValueError, match="holds an earlier run .*--resume.*--overwrite"):
        train(tmp_path / "run", data, max_steps=2, **TINY)
    train(tmp_path / "run", data, max_steps=1, save_steps=1, overwrite=True, **TINY)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1"]


def test_bf16_mixed_precision_training_keeps_float32_weights(tmp_path, data):
    result = train(tmp_path / "bf16", data, max_steps=2, bf16=True, **TINY)
    assert torch.isfinite(torch.tensor(result.metrics["eval_loss"]))
    saved = load_file(result.output_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (False, True), (True, False)])
def test_bf16_autocast_is_the_default_exactly_where_the_cpu_computes_it_natively(tmp_path, monkeypatch, amx,
                                                                                 avx512_bf16):
    from smolite_hf.training import SmoliteTrainingArguments, cpu_computes_bfloat16, precision_summary

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    native = amx or avx512_bf16
    assert cpu_computes_bfloat16() == ("AMX" if amx else "avx512_bf16" if avx512_bf16 else None)
    default = SmoliteTrainingArguments(output_dir=str(tmp_path))
    assert default.bf16 is native and parsed_command("--output-dir", str(tmp_path))[2].bf16 is native
    assert ("natively (AMX)" if amx else "natively (avx512_bf16)" if native else "float32") in precision_summary(default)
    assert parsed_command("--output-dir", str(tmp_path), "--bf16", "false")[2].bf16 is False  # float32 one flag away
    assert parsed_command("--output-dir", str(tmp_path), "--bf16")[2].bf16 is True
    assert SmoliteTrainingArguments(output_dir=str(tmp_path), bf16=False).bf16 is False


def test_config_overrides_change_a_model_from_scratch_and_bad_ones_are_named(tmp_path, data, capsys):
    result = train(tmp_path / "run", data, max_steps=1, config_overrides="hidden_dropout=0,label_smoothing=0.05", **TINY)
    saved = json.loads((result.output_dir / "config.json").read_text())
    assert (saved["hidden_dropout"], saved["label_smoothing"], saved["hidden_size"]) == (0.0, 0.05, 64)
    from smolite_hf.cli import main

    for overrides, named in [("hidden_dropot=0", "'hidden_dropot' is not a SmoliteConfig field"),
                             ("hidden_dropout", "'hidden_dropout' is not FIELD=VALUE"),
                             ("hidden_dropout=abc", "hidden_dropout=abc: could not convert")]:
        code = main(["train", "--data", str(data), "--output-dir", str(tmp_path / "bad"), "--size", "tiny",
                     "--vocab-size", "350", "--config-overrides", overrides])
        err = capsys.readouterr().err
        assert code == 2 and f"--config-overrides {overrides}: {named}" in err, err
    code = main(["train", "--output-dir", str(tmp_path / "ft"), "--from-pretrained", str(result.output_dir),
                 "--data", str(data), "--config-overrides", "hidden_dropout=0.2"])
    assert code == 2 and "keeps its own configuration" in capsys.readouterr().err


# -- options: declared once, shared by the command line and train() ----------------------------------------------


def parsed_command(*argv):
    from transformers import HfArgumentParser

    from smolite_hf.cli import build_parser
    from smolite_hf.training import TRAIN_ARGUMENTS

    return HfArgumentParser(TRAIN_ARGUMENTS).parse_dict(vars(build_parser().parse_args(["train", *argv])),
                                                        allow_extra_keys=True)


def test_the_defaults_are_the_seed_recipe_on_the_command_line_and_in_python(tmp_path):
    from smolite_hf.training import parse_train_options

    model_args, data_args, args = parsed_command("--output-dir", str(tmp_path))
    assert (model_args, data_args) == parse_train_options(output_dir=str(tmp_path))[:2]
    assert args.to_dict() == parse_train_options(output_dir=str(tmp_path))[2].to_dict()
    recipe = (args.learning_rate, args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay,
              args.max_grad_norm, args.optim.value, args.lr_scheduler_type.value)
    assert recipe == (1e-4, 0.9, 0.95, 1e-8, 0.0, 1.0, "adamw_torch_fused", "constant")
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.num_train_epochs) == (64, 64, 1.0)
    assert (args.label_smoothing_factor, args.save_total_limit, args.data_seed) == (0.0, 2, args.seed)
    assert (model_args.size, model_args.vocab_size, data_args.data, data_args.eval_fraction) == ("small", 1500, None, 0.1)


def test_the_default_optimizer_is_torchs_fused_adam_without_weight_decay(tmp_path):
    from transformers import Trainer

    from smolite_hf.training import SmoliteTrainingArguments

    from .conftest import tiny_config

    args = SmoliteTrainingArguments(output_dir=str(tmp_path), use_cpu=True, eval_strategy="no")
    optimizer = Trainer(model=SmoliteForCausalLM(tiny_config()), args=args).create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(group["fused"] is True for group in optimizer.param_groups)
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0}
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-8


KEEP_FREED_MEMORY_PROBE = """
import ctypes, sys
import torch
from smolite_hf.training import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
took = keep_freed_memory() if sys.argv[1] == "keep" else None
block = torch.ones(64 << 20, dtype=torch.uint8)  # a 64 MB tensor, as large as the seed size's
print(took, libc.mallinfo2().hblkhd >= 64 << 20)  # whether it was mapped afresh (mmap) rather than taken from the heap
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist only on Linux")
def test_keep_freed_memory_serves_large_tensors_from_the_heap_instead_of_fresh_mappings():
    def probe(mode):
        done = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY_PROBE, mode], capture_output=True, text=True,
                              check=True)
        return done.stdout.split()

    assert probe("plain") == ["None", "True"]  # glibc's default: a fresh mapping, page-faulted in, unmapped when freed
    assert probe("keep") == ["True", "False"]


def test_smolite_train_keeps_freed_memory_when_it_trains_on_the_cpu(tmp_path, monkeypatch):
    from smolite_hf import training
    from smolite_hf.cli import train as train_command

    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(training, "train_with_arguments", lambda *args: calls.append("train") or
                        training.TrainResult(tmp_path, {}, {}, 0.0, trained=False))
    from smolite_hf.cli import build_parser

    args = build_parser().parse_args(["train", "--output-dir", str(tmp_path), "--use-cpu", "true"])
    assert train_command._train(args) == 0
    assert calls == ["keep", "train"]


def test_the_earlier_flag_names_still_work(tmp_path):
    model_args, data_args, args = parsed_command(
        "--output-dir", str(tmp_path), "--epochs", "3", "--batch-size", "8", "--learning-rate", "5e-4",
        "--size", "seed", "--config", "c.json", "--data", "a.jsonl", "b.jsonl", "--eval-data", "e.jsonl",
        "--eval-fraction", "0.2", "--vocab-size", "420", "--tokenizer", "tok", "--from-pretrained", "base",
        "--max-length", "64", "--resume", "--overwrite", "--bf16", "--lora", "--lora-r", "4", "--lora-alpha", "8",
        "--lora-dropout", "0.1", "--lora-target-modules", "q_proj,v_proj", "--skip-bad-lines", "--allow-pickle",
        "--gradient-checkpointing", "--gradient-accumulation-steps", "2", "--max-steps", "5", "--save-steps", "2",
        "--eval-steps", "1", "--logging-steps", "3", "--seed", "7",
    )
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3, 8, 8)
    assert (args.learning_rate, args.resume, args.overwrite, args.bf16, args.activation_checkpointing) == (5e-4, True, True, True, True)
    assert (args.gradient_accumulation_steps, args.max_steps, args.save_steps, args.eval_steps) == (2, 5, 2, 1)
    assert (args.logging_steps, args.seed, args.data_seed) == (3, 7, 7)
    assert (model_args.size, model_args.config_file, model_args.vocab_size, model_args.max_length) == ("seed", "c.json", 420, 64)
    assert (model_args.tokenizer, model_args.from_pretrained, model_args.allow_pickle) == ("tok", "base", True)
    assert (model_args.lora, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (True, 4, 8, 0.1)
    assert model_args.lora_modules == ["q_proj", "v_proj"]
    assert (data_args.data, data_args.eval_data, data_args.eval_fraction, data_args.skip_bad_lines) == (
        ["a.jsonl", "b.jsonl"], ["e.jsonl"], 0.2, True)


def test_train_takes_field_names_and_command_line_names_and_refuses_others(tmp_path):
    from smolite_hf.training import parse_train_options

    model_args, _, args = parse_train_options(output_dir=str(tmp_path), epochs=2, per_device_eval_batch_size=3,
                                              config="c.json", lora_target_modules=("q_proj",))
    assert (args.num_train_epochs, args.per_device_eval_batch_size, model_args.config_file) == (2, 3, "c.json")
    assert model_args.lora_modules == ["q_proj"]
    with pytest.raises(TypeError, match="unknown option 'epoch'"):
        train(tmp_path, epoch=2)
    with pytest.raises(TypeError, match="'num_train_epochs' twice"):
        train(tmp_path, epochs=2, num_train_epochs=3)


def test_unknown_size_and_resume_from_checkpoint_are_refused(tmp_path, capsys):
    from smolite_hf.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["train", "--output-dir", str(tmp_path), "--size", "huge"])
    assert exited.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path), "--resume-from-checkpoint", "x"]) == 2
    assert "smolite train resumes with --resume" in capsys.readouterr().err


def test_a_quarter_of_the_run_is_rounded_down(tmp_path):
    from smolite_hf.training import SmoliteTrainingArguments, resolve_schedule

    for examples, steps in ((6 * 64, 1), (8 * 64, 2), (10 * 64 - 5, 2)):  # 6, 8 and 10 steps of 64
        args = SmoliteTrainingArguments(output_dir=str(tmp_path))
        resolve_schedule(args, examples)
        assert (args.save_steps, args.eval_steps) == (steps, steps), examples
    given = SmoliteTrainingArguments(output_dir=str(tmp_path), save_steps=3, max_steps=40)
    resolve_schedule(given, 1000)
    assert (given.save_steps, given.eval_steps) == (3, 3)
