"""Two processes (torchrun, gloo on CPU) train like one process with the same global batch."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from .conftest import keras_reference_file

TRAIN = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    from smolite_hf.training import train
    output_dir, data, config, tokenizer, batch_size = sys.argv[1:6]
    train(output_dir, data, config_file=config, tokenizer=tokenizer, batch_size=int(batch_size), max_steps=2,
          eval_fraction=0.0, learning_rate=1e-3, logging_steps=1, disable_tqdm=True, seed=7,
          bf16=False)  # float32: bfloat16 would round the two halves of the batch differently from the whole
    # every process returns only once the final model is saved, and without the process group train() started
    print(f"rank {os.environ.get('RANK', 0)}: final model {(Path(output_dir) / 'model.safetensors').is_file()}, "
          f"process group {torch.distributed.is_initialized()}")
    """
)


@pytest.mark.slow
def test_two_process_run_matches_one_process(tmp_path):
    data = tmp_path / "eight.jsonl"  # 8 examples: each of the 2 steps sees the whole data set, in any order
    lines = [json.dumps({"conversations": [{"from": "human", "value": f"질문 {i} 안녕하세요"},
                                           {"from": "gpt", "value": f"대답 {i} 반가워요 " * (i + 1)}]}) for i in range(8)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "config.json"  # no dropout: masks would differ between one and two processes
    config.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "intermediate_size": 128, "adapter_size": 16, "hidden_dropout": 0.0}))
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    tokenizer = str(keras_reference_file("tokenizer.model"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), str(data), str(config), tokenizer, "8"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(script), str(tmp_path / "two"), str(data), str(config), tokenizer, "4"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: final model True, process group False" in double.stdout, double.stdout[-2000:]

    one = json.loads((tmp_path / "one" / "checkpoint-2" / "trainer_state.json").read_text())
    two = json.loads((tmp_path / "two" / "checkpoint-2" / "trainer_state.json").read_text())
    losses_one = [entry["loss"] for entry in one["log_history"] if "loss" in entry]
    losses_two = [entry["loss"] for entry in two["log_history"] if "loss" in entry]
    assert len(losses_one) == len(losses_two) == 2
    for a, b in zip(losses_one, losses_two):
        assert abs(a - b) < 1e-4, (losses_one, losses_two)
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-5, rtol=1e-4, msg=name)
