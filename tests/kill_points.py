"""Run `smolite train` and SIGKILL it at a chosen point — the fault injection of tests/test_killed_training.py.

    python -m tests.kill_points POINT [STEP] -- smolite train arguments...

POINT is where the process kills itself (a real SIGKILL: no handler, no cleanup runs):
  `mid-weights STEP`     while checkpoint-STEP's model.safetensors is being written (half of it on disk);
  `after-weights STEP`   after checkpoint-STEP's weights, before its optimizer state;
  `mid-state STEP`       while checkpoint-STEP's trainer_state.json is being written (half of it on disk);
  `final-save`           while the final model is being moved into the output folder (two files moved);
  `after SECONDS`        SECONDS after training starts (`Trainer.train` is entered).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    point, args, train_args = argv[0], argv[1:split], argv[split + 1 :]
    from transformers import Trainer, TrainerState

    from smolite_hf import cli, folders
    from smolite_hf.modeling_smolite import SmolitePreTrainedModel

    def at(step_dir) -> bool:
        return os.path.basename(os.fspath(step_dir)) == f"checkpoint-{args[0]}"

    if point == "mid-weights":
        original = SmolitePreTrainedModel.save_pretrained

        def save_pretrained(self, directory, *a, **k):
            original(self, directory, *a, **k)
            if at(directory):
                path = os.path.join(directory, "model.safetensors")
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)
                die()

        SmolitePreTrainedModel.save_pretrained = save_pretrained
    elif point == "after-weights":
        original = Trainer._save_optimizer_and_scheduler

        def save_optimizer_and_scheduler(self, directory):
            if at(directory):
                die()
            original(self, directory)

        Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    elif point == "mid-state":
        original = TrainerState.save_to_json

        def save_to_json(self, path):
            original(self, path)
            if at(os.path.dirname(path)):
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)
                die()

        TrainerState.save_to_json = save_to_json
    elif point == "final-save":
        moved = []
        original_replace = os.replace

        def replace(source, destination):
            original_replace(source, destination)
            if os.path.basename(os.path.dirname(os.fspath(source))).startswith(".final-"):
                moved.append(destination)
                if len(moved) == 2:
                    die()

        folders.os.replace = replace
    elif point == "after":
        original_train = Trainer.train

        def train(self, *a, **k):
            threading.Timer(float(args[0]), die).start()
            return original_train(self, *a, **k)

        Trainer.train = train
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    return cli.main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
