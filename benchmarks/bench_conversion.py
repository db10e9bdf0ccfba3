"""Time `smolite convert` on a seed-size Keras weights file (vocabulary 72000, hidden 256, 6 blocks).

    python benchmarks/bench_conversion.py

Two figures: the conversion in this process (`convert_keras_to_hf`), and the command a user runs, `smolite convert
--keras-weights FILE --output-dir DIR`, as a fresh process — beside the start-up such a process costs before it
converts anything (`smolite --help`: the interpreter, torch and transformers imported).

No seed-size Keras file is published with the fixtures, so one is written first in the original Keras 3 layout
(tests/keras_files.py, the inverse of the converter) from a randomly initialised seed-size model. The conversion
includes its own verification (the converted model's logits against a NumPy forward pass of the Keras weights).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smolite_hf import SmoliteConfig, SmoliteForCausalLM  # noqa: E402
from smolite_hf.convert_smolite_keras_to_hf import convert_keras_to_hf  # noqa: E402
from tests.keras_files import write_keras_weights  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    config = SmoliteConfig(vocab_size=72000, hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                           intermediate_size=1024, adapter_size=64)
    model = SmoliteForCausalLM(config)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "smolite_seed.weights.h5"
        write_keras_weights(model, source)
        size_mb = source.stat().st_size / 1e6
        started = time.perf_counter()
        convert_keras_to_hf(source, Path(folder) / "converted")
        seconds = time.perf_counter() - started
        converted = SmoliteForCausalLM.from_pretrained(Path(folder) / "converted")
        same = all(torch.equal(converted.state_dict()[k], v) for k, v in model.state_dict().items())
        command = [sys.executable, "-m", "smolite_hf", "convert", "--keras-weights", str(source), "--output-dir",
                   str(Path(folder) / "by_command")]
        command_seconds = timed(command)
        startup_seconds = timed([sys.executable, "-m", "smolite_hf", "--help"])
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"converted a seed-size Keras weights file ({size_mb:.0f} MB, {parameters:.1f}M parameters) in {seconds:.1f} s "
          f"in-process, verification included; weights identical to the source model: {same}")
    print(f"the command `smolite convert --keras-weights FILE --output-dir DIR`: {command_seconds:.1f} s, of which the "
          f"start-up of a smolite process (`smolite --help`) is {startup_seconds:.1f} s")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
