"""Smolite's training step against the original Keras implementation, side by side on this machine.

The original (TensorFlow/Keras) is re-implemented here from `shared/docs/original-smolite.md` — rotary on the
normalised input before the projections, Keras `MultiHeadAttention` with biases, the residual adapter with exact
GELU, SwiGLU, tied head, the label-smoothed masked loss, Adam(1e-4, 0.9, 0.95, 1e-8) with per-tensor clipping to 1.0,
`train_on_batch` as the original trained — and checked against the reference fixture's logits and loss before
anything is timed. Both sides then train on the same seed-size work (vocabulary 72000, hidden 256, 6 layers, batch
64 x 100, 60 trained positions per row, dropout 0.1), each in a fresh process, taking turns, and the script prints
seconds per step, trained tokens/s, the ratio, the CPU (model, AVX-512, avx512_bf16, AMX), the BLAS backends,
thread counts and each framework's measured matrix-multiply speed. Smolite's step is the one `smolite train` runs:
its defaults (`SmoliteTrainingArguments`: the precision it picks for this CPU, optimizer, clipping) with the model's
default loss path; where that default is bfloat16 autocast, the float32 step (`--bf16 false`) is timed too. MFU is
the model's work per second over the best matrix-multiply speed measured here for the row's dtype, by either
framework (the hardware's reachable peak, not one library's).

    pip install -e ".[bench-keras]"        # TensorFlow and Keras: only for this benchmark
    python benchmarks/bench_vs_keras.py [--rounds 4] [--steps 3] [--threads 2] [--smolite-dtype float32 bfloat16]
    python benchmarks/bench_vs_keras.py --check-only     # the parity check of the Keras re-implementation alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("SMOLITE_SHARED", REPO.parent / "shared")) / "fixtures" / "keras_reference"
SEED = dict(vocab_size=72000, d_model=256, n_layers=6, num_heads=8, d_ff=1024, adapter_dim=64, seq_len=100)
TRAINED_PER_ROW = 60


# ---------------------------------------------------------------------------------------------- the machine


def cpu_description() -> dict:
    """The CPU's model name, with its family and model numbers where the name alone does not tell generations apart
    (virtual machines report AMD's EPYC generations, Zen 3 to Zen 5, all as "AMD EPYC"), and the features that decide
    the speed of its matrix products."""
    flags, model, numbers = set(), platform.processor(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and model in ("", platform.processor()):
                model = value
            elif key in ("cpu family", "model"):
                numbers.setdefault(key, value)
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    if numbers:
        model = f"{model} (family {numbers.get('cpu family', '?')}, model {numbers.get('model', '?')})"
    return {
        "model": model,
        "cores": os.cpu_count(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
    }


def step_flops(batch: int, head_positions: int) -> float:
    """Forward + backward (3x forward) FLOPs of a training step, the head at `head_positions` positions."""
    d, layers, ff, vocab, seq = SEED["d_model"], SEED["n_layers"], SEED["d_ff"], SEED["vocab_size"], SEED["seq_len"]
    tokens = batch * seq
    layer_matmul_params = 4 * d * d + 2 * d * SEED["adapter_dim"] + 3 * d * ff
    forward = tokens * layers * (2 * layer_matmul_params + 4 * seq * d) + head_positions * 2 * d * vocab
    return 3 * forward


def training_batch(batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(5, SEED["vocab_size"], size=(batch, SEED["seq_len"]), dtype=np.int64)
    prompt = SEED["seq_len"] - TRAINED_PER_ROW
    return ids, prompt


# ---------------------------------------------------------------------------------------------- Keras side


def keras_model(vocab_size, d_model, n_layers, num_heads, d_ff, adapter_dim, seq_len, dropout=0.1):
    import keras
    import numpy as np
    from keras import layers, ops

    head_dim = d_model // num_heads

    class RotaryEmbedding(layers.Layer):
        """Interleaved pairs (2i, 2i+1) inside each head's chunk of the features, angle t * 10000^(-2i/dh)."""

        def call(self, x):
            t = ops.cast(ops.arange(ops.shape(x)[1]), "float32")
            inv = np.power(10000.0, -np.arange(0, head_dim, 2, dtype=np.float64) / head_dim).astype("float32")
            angles = t[:, None] * inv[None, :]  # [T, dh/2]
            cos, sin = ops.tile(ops.cos(angles), (1, num_heads)), ops.tile(ops.sin(angles), (1, num_heads))
            pairs = ops.reshape(x, (-1, ops.shape(x)[1], d_model // 2, 2))
            a, b = pairs[..., 0], pairs[..., 1]
            rotated = ops.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
            return ops.reshape(rotated, ops.shape(x))

    class SwiGLU(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.proj, self.out = layers.Dense(2 * d_ff), layers.Dense(d_model)

        def call(self, x):
            p = self.proj(x)
            return self.out(p[..., :d_ff] * ops.silu(p[..., d_ff:]))

    class GPTBlock(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ln1 = layers.LayerNormalization(epsilon=1e-5)
            self.rope = RotaryEmbedding()
            self.mha = layers.MultiHeadAttention(num_heads=num_heads, key_dim=head_dim)
            self.drop1 = layers.Dropout(dropout)
            self.adapter_down = layers.Dense(adapter_dim)
            self.adapter_up = layers.Dense(d_model)
            self.ln2 = layers.LayerNormalization(epsilon=1e-5)
            self.ffn = SwiGLU()
            self.drop2 = layers.Dropout(dropout)

        def call(self, x, training=False):
            h = self.ln1(x)
            r = self.rope(h)
            a = self.drop1(self.mha(query=r, value=h, key=r, use_causal_mask=True), training=training)
            a = a + self.adapter_up(keras.activations.gelu(self.adapter_down(a), approximate=False))
            x = x + a
            return x + self.drop2(self.ffn(self.ln2(x)), training=training)

    class Smolite(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.token_embedding = layers.Embedding(vocab_size, d_model)
            self.blocks = [GPTBlock() for _ in range(n_layers)]
            self.ln_f = layers.LayerNormalization(epsilon=1e-5)

        def call(self, ids, training=False):
            x = self.token_embedding(ids)
            for block in self.blocks:
                x = block(x, training=training)
            return ops.matmul(self.ln_f(x), ops.transpose(self.token_embedding.embeddings))

    model = Smolite()
    model(np.zeros((1, seq_len), dtype="int32"))
    return model


def keras_loss(eps: float = 0.1, pad_id: int = 0):
    """The seed's loss, as its README writes it (`smoothed_loss_keras`): label-smoothed cross entropy through a one-hot
    of the targets, over the targets that are not `pad_id`, a token-level mean. (A `take_along_axis` form computes
    the same number, but TensorFlow's gradient of it made the step about 5 s slower: the original's own form is the
    fair baseline.)"""
    import tensorflow as tf

    def loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        mask = tf.cast(tf.not_equal(y_true, pad_id), tf.float32)
        vocab = tf.shape(y_pred)[-1]
        y_true_oh = tf.one_hot(y_true, depth=vocab, dtype=tf.float32)
        y_true_ls = (1.0 - eps) * y_true_oh + eps / tf.cast(vocab, tf.float32)
        log_probs = tf.nn.log_softmax(y_pred, axis=-1)
        per_tok = -tf.reduce_sum(y_true_ls * log_probs, axis=-1)
        per_tok = per_tok * mask
        return tf.reduce_sum(per_tok) / (tf.reduce_sum(mask) + 1e-8)

    return loss


def load_fixture_weights(model, path: Path):
    """Assign the fixture's Keras weights (layout in its README) to the re-implementation, by HDF5 path."""
    import h5py

    with h5py.File(path, "r") as f:
        model.token_embedding.embeddings.assign(f["layers/embedding/vars/0"][()])
        model.ln_f.gamma.assign(f["layers/layer_normalization/vars/0"][()])
        model.ln_f.beta.assign(f["layers/layer_normalization/vars/1"][()])
        for k, block in enumerate(model.blocks):
            group = f["blocks"]["gpt_block" if k == 0 else f"gpt_block_{k}"]
            pairs = {
                "ln1": (block.ln1.gamma, block.ln1.beta),
                "ln2": (block.ln2.gamma, block.ln2.beta),
                "mha/query_dense": (block.mha._query_dense.kernel, block.mha._query_dense.bias),
                "mha/key_dense": (block.mha._key_dense.kernel, block.mha._key_dense.bias),
                "mha/value_dense": (block.mha._value_dense.kernel, block.mha._value_dense.bias),
                "mha/output_dense": (block.mha._output_dense.kernel, block.mha._output_dense.bias),
                "adapter_down": (block.adapter_down.kernel, block.adapter_down.bias),
                "adapter_up": (block.adapter_up.kernel, block.adapter_up.bias),
                "ffn/proj": (block.ffn.proj.kernel, block.ffn.proj.bias),
                "ffn/out": (block.ffn.out.kernel, block.ffn.out.bias),
            }
            for name, variables in pairs.items():
                for index, variable in enumerate(variables):
                    variable.assign(group[f"{name}/vars/{index}"][()])


def keras_check() -> dict:
    """Logits and loss of the re-implementation on the reference fixture, against the original's."""
    import numpy as np

    config = json.loads((FIXTURE / "config.json").read_text())
    model = keras_model(config["vocab_size"], config["d_model"], config["n_layers"], config["num_heads"],
                        config["d_ff"], config["adapter_dim"], config["seq_len"])
    load_fixture_weights(model, FIXTURE / "smolite_tiny.weights.h5")
    expected = np.load(FIXTURE / "expected.npz")
    logits = np.asarray(model(expected["input_ids"], training=False))
    loss = float(keras_loss()(expected["labels_padmasked"], logits))
    return {"max_abs_logits": float(np.abs(logits - expected["logits"]).max()),
            "loss": loss, "expected_loss": float(expected["loss"])}


def keras_worker(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ids, prompt = training_batch(args.batch)
    targets = np.zeros_like(ids)
    targets[:, prompt - 1 : -1] = ids[:, prompt:]  # the original's alignment: position t predicts ids[t + 1]
    keras.utils.set_random_seed(0)
    model = keras_model(**SEED)
    model.compile(optimizer=keras.optimizers.Adam(1e-4, beta_1=0.9, beta_2=0.95, epsilon=1e-8, clipnorm=1.0),
                  loss=keras_loss())
    model.train_on_batch(ids, targets)  # builds the optimizer and traces the step
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model.train_on_batch(ids, targets)
        times.append(time.perf_counter() - start)
    return {"times": times, "jit_compile": bool(model.jit_compile), "matmul": tf_matmul_speed()}


def tf_matmul_speed() -> dict:
    import tensorflow as tf

    def speed(m, k, n, seconds=1.5):
        # eager ops on the CPU run synchronously; `.numpy()` on each product would add a copy of it (1.8 GB at the
        # head's shape) and halve the figure, so only a scalar is read back, once
        a, b = tf.random.normal((m, k)), tf.random.normal((k, n))
        tf.matmul(a, b)[0, 0].numpy()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            product = tf.matmul(a, b)
            count += 1
        product[0, 0].numpy()
        return 2 * m * k * n * count / (time.perf_counter() - start)

    return {"float32 2048^3": speed(2048, 2048, 2048), "float32 head": speed(6400, 256, 72000, 3.0)}


# ---------------------------------------------------------------------------------------------- Smolite side


def smolite_worker(args) -> dict:
    import torch

    from smolite_hf import SmoliteConfig, SmoliteForCausalLM
    from smolite_hf.training import SmoliteTrainingArguments, keep_freed_memory

    keep_freed_memory()  # as smolite train does on the CPU
    torch.set_num_threads(args.threads)
    ids, prompt = training_batch(args.batch)
    input_ids = torch.from_numpy(ids)
    labels = input_ids.clone()
    labels[:, :prompt] = -100  # prompt positions: 60 trained targets per row, as on the Keras side
    torch.manual_seed(0)
    model = SmoliteForCausalLM(SmoliteConfig(**{k: v for k, v in SEED.items()})).train()  # dropout 0.1, the default
    fused = SmoliteTrainingArguments.__dataclass_fields__["optim"].default == "adamw_torch_fused"  # smolite train's
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                  fused=fused)  # the seed recipe
    bf16 = args.smolite_dtype[0] == "bfloat16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"times": times, "matmul": torch_matmul_speed(), "config": torch.__config__.show().splitlines()[:12]}


def torch_matmul_speed() -> dict:
    import torch

    def speed(m, k, n, dtype=torch.float32, seconds=1.5):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.matmul(a, b)
            count += 1
        return 2 * m * k * n * count / (time.perf_counter() - start)

    return {"float32 2048^3": speed(2048, 2048, 2048), "float32 head": speed(6400, 256, 72000, seconds=3.0),
            "bfloat16 2048^3": speed(2048, 2048, 2048, torch.bfloat16)}


# ---------------------------------------------------------------------------------------------- the run


def run_worker(side: str, args) -> dict:
    worker, _, dtype = side.partition(":")  # "smolite:bfloat16": the Smolite step under bfloat16 autocast
    command = [sys.executable, __file__, "--worker", worker, "--steps", str(args.steps), "--batch", str(args.batch),
               "--threads", str(args.threads), "--smolite-dtype", dtype or "float32"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="turns per side, each a fresh process (default 4)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per turn, after one warm-up (default 3)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--smolite-dtype", nargs="+", choices=["float32", "bfloat16"],
                        help="Smolite step(s) to time (default: smolite train's default here, and float32 if that is "
                        "not float32)")
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--worker", choices=["keras", "smolite", "check"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = {"keras": keras_worker, "smolite": smolite_worker, "check": lambda a: keras_check()}[args.worker](args)
        print(json.dumps(result))
        return

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; AVX-512 {'yes' if cpu['avx512f'] else 'no'}, "
          f"avx512_bf16 {'yes' if cpu['avx512_bf16'] else 'no'}, AMX {'yes' if cpu['amx'] else 'no'}; "
          f"{args.threads} threads per framework")
    check = run_worker("check", args)
    print(f"Keras re-implementation on the reference fixture: logits max |diff| {check['max_abs_logits']:.1e}, "
          f"loss {check['loss']:.7f} (original {check['expected_loss']:.7f})")
    if check["max_abs_logits"] > 1e-5 or abs(check["loss"] - check["expected_loss"]) > 1e-5:
        raise SystemExit("the Keras re-implementation does not reproduce the original; nothing timed")
    if args.check_only:
        return

    if not args.smolite_dtype:
        default = default_training_dtype()
        args.smolite_dtype = [default] + (["float32"] if default != "float32" else [])
    print(f"smolite train's default precision here: {default_training_dtype()}")
    sides = ["keras"] + [f"smolite:{dtype}" for dtype in args.smolite_dtype]
    times = {side: [] for side in sides}
    last = {}
    for round_ in range(args.rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            last[side] = run_worker(side, args)
            times[side] += last[side]["times"]
            print(f"  round {round_ + 1} {side:17s} " + " ".join(f"{t:.2f}" for t in last[side]["times"]) + " s/step",
                  flush=True)

    import torch

    print(f"torch {torch.__version__}: BLAS "
          + ("MKL" if torch.backends.mkl.is_available() else "not MKL")
          + f", oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}; "
          f"TensorFlow {__import__('importlib.metadata').metadata.version('tensorflow-cpu') if _has('tensorflow-cpu') else '?'}"
          f" (oneDNN), Keras jit_compile={last['keras']['jit_compile']}")
    for side in sides:
        print(f"  {side} matmul: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in last[side]["matmul"].items()))
    torch_speeds = [speed for side in sides[1:] for speed in [last[side]["matmul"]]]
    peaks = {"float32": max(max(last["keras"]["matmul"].values()), *(m["float32 2048^3"] for m in torch_speeds)),
             "bfloat16": max(m["bfloat16 2048^3"] for m in torch_speeds)}
    trained = args.batch * TRAINED_PER_ROW
    useful = step_flops(args.batch, args.batch * SEED["seq_len"])
    print(f"\nseed size, batch {args.batch} x {SEED['seq_len']}, {TRAINED_PER_ROW} trained positions per row, "
          f"dropout 0.1, {args.rounds} rounds x {args.steps} steps, median:")
    print(f"  {'':34s} {'s/step':>7s} {'trained tok/s':>14s} {'MFU':>6s} {'vs original':>12s}")
    medians = {side: statistics.median(t) for side, t in times.items()}
    default = default_training_dtype()
    rows = [("original Keras train_on_batch", "keras", "float32")]
    rows += [(f"Smolite ({dtype}{', the default' if dtype == default else ''})", f"smolite:{dtype}", dtype)
             for dtype in args.smolite_dtype]
    for name, side, dtype in rows:
        seconds = medians[side]
        print(f"  {name:34s} {seconds:7.2f} {trained / seconds:14.0f} {useful / seconds / peaks[dtype]:6.1%} "
              f"{medians['keras'] / seconds:11.2f}×")
    print(f"MFU: the model's work ({useful / 1e12:.2f} TFLOP per step, the head at every position) per second over the "
          f"best matmul speed measured here for the row's dtype, by either framework ({peaks['float32'] / 1e9:.0f} "
          f"GFLOP/s float32, {peaks['bfloat16'] / 1e9:.0f} GFLOP/s bfloat16).")


def default_training_dtype() -> str:
    """The precision `smolite train` trains in on this machine by default."""
    import tempfile

    from smolite_hf.training import SmoliteTrainingArguments

    with tempfile.TemporaryDirectory() as folder:
        return "bfloat16" if SmoliteTrainingArguments(output_dir=folder).bf16 else "float32"


def _has(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
