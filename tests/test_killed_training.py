"""Killed training runs (a real SIGKILL, at injected points and at random times) resume with `--resume` to the same
final weights as an uninterrupted run; incomplete checkpoints are skipped with a message; a kill during the final
save leaves no folder that loads."""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from smolite_hf.folders import ModelFolderError, check_model_folder
from smolite_hf.training import train

from .conftest import REPO, keras_reference_file

pytestmark = pytest.mark.slow


def make_settings(converted_dir, steps, save_every):
    return dict(data=str(keras_reference_file("conversations.jsonl")), tokenizer=str(converted_dir), size="tiny",
                batch_size=4, max_steps=steps, save_steps=save_every, eval_steps=1000, eval_fraction=0.2, seed=0)


def uninterrupted(settings, folder):
    result = train(folder / "run", disable_tqdm=True, **settings)
    return load_file(result.output_dir / "model.safetensors")


def cli_args(settings, output_dir, resume):
    args = ["--output-dir", str(output_dir), "--data", settings["data"], "--tokenizer", settings["tokenizer"],
            "--size", settings["size"], "--batch-size", str(settings["batch_size"]), "--max-steps",
            str(settings["max_steps"]), "--save-steps", str(settings["save_steps"]), "--eval-steps", "1000",
            "--eval-fraction", "0.2", "--seed", "0"]
    return args + (["--resume"] if resume else [])


def run_killed(settings, output_dir, point, *point_args, resume):
    command = [sys.executable, "-m", "tests.kill_points", point, *map(str, point_args), "--",
               *cli_args(settings, output_dir, resume)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def finish(settings, output_dir):
    done = subprocess.run([sys.executable, "-m", "smolite_hf", "train", *cli_args(settings, output_dir, resume=True)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_weights(output_dir, reference):
    check_model_folder(output_dir)  # complete, checksums match
    final = load_file(output_dir / "model.safetensors")
    assert final.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], rtol=0, atol=0, msg=name)
    assert not list(output_dir.glob(".final-*")) and not (output_dir / ".smolite-saving").exists()


def test_kills_while_checkpoints_and_the_final_model_are_written(converted_dir, tmp_path):
    settings = make_settings(converted_dir, steps=8, save_every=2)
    reference = uninterrupted(settings, tmp_path / "reference")
    run = tmp_path / "run"
    killed = run_killed(settings, run, "mid-weights", 2, resume=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run / "checkpoint-2").is_dir()  # half-written: the Trainer alone would resume from it

    for point, step, previous in (("after-weights", 4, 2), ("mid-state", 6, 4)):
        killed = run_killed(settings, run, point, step, resume=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert f"checkpoint-{previous} is incomplete" in killed.stdout, killed.stdout[-3000:]

    killed = run_killed(settings, run, "final-save", resume=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "checkpoint-6 is incomplete" in killed.stdout
    # the final save was cut: no loader accepts the folder, and ours says why
    with pytest.raises(ModelFolderError, match="interrupted"):
        check_model_folder(run)
    with pytest.raises((OSError, ValueError)):  # transformers' own loader finds no config.json
        AutoModelForCausalLM.from_pretrained(run)

    finish(settings, run)
    assert_same_weights(run, reference)


def test_kills_at_random_times(converted_dir, tmp_path):
    """Three kills at random moments of training (seeded, so a failure can be replayed), then a resume to the end."""
    settings = make_settings(converted_dir, steps=60, save_every=3)
    reference = uninterrupted(settings, tmp_path / "reference")
    run = tmp_path / "run"
    chooser = random.Random(2026)
    kills = 0
    for attempt in range(3):
        killed = run_killed(settings, run, "after", round(chooser.uniform(0.05, 1.0), 3), resume=attempt > 0)
        if killed.returncode == 0:
            break  # the run finished before its kill time
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        kills += 1
    assert kills >= 1
    finish(settings, run)
    assert_same_weights(run, reference)
