"""Convert original Smolite Keras weights (`*.weights.h5`) into a Hugging Face model folder.

Usage:

```bash
smolite convert --keras-weights smolite.weights.h5 --output-dir smolite-hf
```

```python
from smolite_hf.convert_smolite_keras_to_hf import convert_keras_to_hf
convert_keras_to_hf("smolite.weights.h5", "smolite-hf")
```

Every size (vocabulary, hidden, blocks, heads, head size, feed-forward, adapter) is read from the weight shapes, so
any size of the released family converts without a table. The window (`max_position_embeddings`, 100 for every
released size) and the special-token ids cannot be seen in the weights: they default to the seed's values and can be
given. The folder is written to a temporary folder beside the destination, reloaded, checked against an independent
NumPy forward pass of the Keras weights, and only then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .configuration_smolite import SmoliteConfig

# (Keras dataset path relative to a block group, HF parameter name(s) relative to `model.layers.{i}`, conversion).
# Keras dense kernels are [in, out]; a torch Linear weight is [out, in]. Attention kernels carry a head axis:
# query/key/value [d, H, dh] flatten to [d, H*dh] (head-major), the output kernel [H, dh, d] to [H*dh, d].
BLOCK_PATTERNS: list[tuple[str, tuple[str, ...], str]] = [
    (r"ln1/vars/0", ("input_layernorm.weight",), "copy"),
    (r"ln1/vars/1", ("input_layernorm.bias",), "copy"),
    (r"mha/(?P<qkv>query|key|value)_dense/vars/0", ("self_attn.{qkv}_proj.weight",), "heads_in_kernel"),
    (r"mha/(?P<qkv>query|key|value)_dense/vars/1", ("self_attn.{qkv}_proj.bias",), "flatten"),
    (r"mha/output_dense/vars/0", ("self_attn.o_proj.weight",), "heads_out_kernel"),
    (r"mha/output_dense/vars/1", ("self_attn.o_proj.bias",), "copy"),
    (r"adapter_(?P<side>down|up)/vars/0", ("adapter.{side}.weight",), "kernel"),
    (r"adapter_(?P<side>down|up)/vars/1", ("adapter.{side}.bias",), "copy"),
    (r"ln2/vars/0", ("post_attention_layernorm.weight",), "copy"),
    (r"ln2/vars/1", ("post_attention_layernorm.bias",), "copy"),
    # SwiGLU input projection: the first d_ff columns are the value (up_proj), the last d_ff the gate (gate_proj).
    (r"ffn/proj/vars/0", ("mlp.up_proj.weight", "mlp.gate_proj.weight"), "split_kernel"),
    (r"ffn/proj/vars/1", ("mlp.up_proj.bias", "mlp.gate_proj.bias"), "split"),
    (r"ffn/out/vars/0", ("mlp.down_proj.weight",), "kernel"),
    (r"ffn/out/vars/1", ("mlp.down_proj.bias",), "copy"),
]
SHORT_NAMES = {"query": "q", "key": "k", "value": "v"}
TOP_LEVEL_PATTERNS: list[tuple[str, tuple[str, ...], str]] = [
    (r"layers/embedding(?:_\d+)?/vars/0", ("model.embed_tokens.weight",), "copy"),
    (r"layers/layer_normalization(?:_\d+)?/vars/0", ("model.norm.weight",), "copy"),
    (r"layers/layer_normalization(?:_\d+)?/vars/1", ("model.norm.bias",), "copy"),
]
BLOCK_DATASETS = [
    "ln1/vars/0", "ln1/vars/1",
    "mha/query_dense/vars/0", "mha/query_dense/vars/1",
    "mha/key_dense/vars/0", "mha/key_dense/vars/1",
    "mha/value_dense/vars/0", "mha/value_dense/vars/1",
    "mha/output_dense/vars/0", "mha/output_dense/vars/1",
    "adapter_down/vars/0", "adapter_down/vars/1",
    "adapter_up/vars/0", "adapter_up/vars/1",
    "ln2/vars/0", "ln2/vars/1",
    "ffn/proj/vars/0", "ffn/proj/vars/1",
    "ffn/out/vars/0", "ffn/out/vars/1",
]  # fmt: skip

# Largest max-abs difference allowed between the converted model and the NumPy forward pass, relative to the
# largest logit. Float32 rounding stays near 1e-6; the smallest architectural slip (tanh GELU) is about 3e-4.
VERIFY_TOLERANCE = 1e-4


class SmoliteConversionError(ValueError):
    """The input is not a Smolite Keras weights file, or the output folder cannot be written."""


@dataclass
class KerasSmolite:
    """The weights of an original Smolite model, by HDF5 path, with the sizes read from their shapes."""

    path: Path
    arrays: dict[str, np.ndarray]
    block_groups: list[str]  # `blocks/<name>` in block order
    embedding_path: str
    final_norm_group: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    head_dim: int
    intermediate_size: int
    adapter_size: int


def _block_order(name: str) -> int:
    """`gpt_block` is block 0, `gpt_block_<k>` block k: sort numerically, not as strings (`_10` after `_9`)."""
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else 0


def _find_one(h5file, parent: str, pattern: str, file: Path) -> str:
    """The single child group of `parent` whose name matches `pattern`."""
    if parent not in h5file or not hasattr(h5file[parent], "keys"):
        raise SmoliteConversionError(
            f"{file}: not a Smolite Keras weights file: the HDF5 group '{parent}' is missing "
            f"(expected groups: 'layers', 'blocks')."
        )
    names = [name for name in h5file[parent].keys() if re.fullmatch(pattern, name)]
    if len(names) != 1:
        raise SmoliteConversionError(
            f"{file}: not a Smolite Keras weights file: expected exactly one group '{parent}/{pattern}', "
            f"found {names or 'none'}."
        )
    return f"{parent}/{names[0]}"


def read_keras_weights(path: str | os.PathLike) -> KerasSmolite:
    """Read and validate a Keras 3 Smolite weights file, deriving every size from the weight shapes.

    Raises `SmoliteConversionError` naming the file and the missing or mis-shaped HDF5 path. A top-level `optimizer`
    group (present when the model was compiled and trained) is ignored.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise SmoliteConversionError(f"{path}: no such file (expected a Keras '*.weights.h5' file).")
    try:
        h5file = h5py.File(path, "r")
    except OSError as err:
        raise SmoliteConversionError(f"{path}: not a readable HDF5 file ({err}).") from err

    with h5file:
        embedding_group = _find_one(h5file, "layers", r"embedding(_\d+)?", path)
        final_norm_group = _find_one(h5file, "layers", r"layer_normalization(_\d+)?", path)
        if "blocks" not in h5file or not hasattr(h5file["blocks"], "keys") or not len(h5file["blocks"]):
            raise SmoliteConversionError(
                f"{path}: not a Smolite Keras weights file: the HDF5 group 'blocks' is missing or empty."
            )
        block_groups = [f"blocks/{name}" for name in sorted(h5file["blocks"].keys(), key=_block_order)]
        wanted = [f"{embedding_group}/vars/0", f"{final_norm_group}/vars/0", f"{final_norm_group}/vars/1"]
        wanted += [f"{group}/{dataset}" for group in block_groups for dataset in BLOCK_DATASETS]

        arrays = {}
        for name in wanted:
            if name not in h5file or not hasattr(h5file[name], "shape"):
                raise SmoliteConversionError(
                    f"{path}: not a Smolite Keras weights file: the HDF5 dataset '{name}' is missing."
                )
            try:
                arrays[name] = np.asarray(h5file[name][()], dtype=np.float32)
            except (OSError, TypeError, ValueError) as err:
                raise SmoliteConversionError(
                    f"{path}: the HDF5 dataset '{name}' cannot be read (truncated or corrupt file?): {err}"
                ) from err

    vocab_size, hidden_size = _shape(arrays, f"{embedding_group}/vars/0", 2, path)
    first = block_groups[0]
    _, num_heads, head_dim = _shape(arrays, f"{first}/mha/query_dense/vars/0", 3, path)
    intermediate_size = _shape(arrays, f"{first}/ffn/out/vars/0", 2, path)[0]
    adapter_size = _shape(arrays, f"{first}/adapter_down/vars/0", 2, path)[1]
    weights = KerasSmolite(
        path=path,
        arrays=arrays,
        block_groups=block_groups,
        embedding_path=f"{embedding_group}/vars/0",
        final_norm_group=final_norm_group,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=len(block_groups),
        num_attention_heads=num_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        adapter_size=adapter_size,
    )
    _check_shapes(weights)
    return weights


def _shape(arrays: dict[str, np.ndarray], name: str, ndim: int, path: Path) -> tuple[int, ...]:
    shape = arrays[name].shape
    if len(shape) != ndim or 0 in shape:
        raise SmoliteConversionError(f"{path}: the HDF5 dataset '{name}' has shape {list(shape)}, expected {ndim} non-empty axes.")
    return shape


def _check_shapes(w: KerasSmolite) -> None:
    d, heads, dh, f, a = w.hidden_size, w.num_attention_heads, w.head_dim, w.intermediate_size, w.adapter_size
    expected = {w.embedding_path: (w.vocab_size, d), f"{w.final_norm_group}/vars/0": (d,), f"{w.final_norm_group}/vars/1": (d,)}
    for group in w.block_groups:
        shapes = {
            "ln1/vars/0": (d,), "ln1/vars/1": (d,), "ln2/vars/0": (d,), "ln2/vars/1": (d,),
            "mha/query_dense/vars/0": (d, heads, dh), "mha/query_dense/vars/1": (heads, dh),
            "mha/key_dense/vars/0": (d, heads, dh), "mha/key_dense/vars/1": (heads, dh),
            "mha/value_dense/vars/0": (d, heads, dh), "mha/value_dense/vars/1": (heads, dh),
            "mha/output_dense/vars/0": (heads, dh, d), "mha/output_dense/vars/1": (d,),
            "adapter_down/vars/0": (d, a), "adapter_down/vars/1": (a,),
            "adapter_up/vars/0": (a, d), "adapter_up/vars/1": (d,),
            "ffn/proj/vars/0": (d, 2 * f), "ffn/proj/vars/1": (2 * f,),
            "ffn/out/vars/0": (f, d), "ffn/out/vars/1": (d,),
        }  # fmt: skip
        expected.update({f"{group}/{name}": shape for name, shape in shapes.items()})
    for name, shape in expected.items():
        if w.arrays[name].shape != shape:
            raise SmoliteConversionError(
                f"{w.path}: the HDF5 dataset '{name}' has shape {list(w.arrays[name].shape)}, expected {list(shape)} "
                f"(sizes read from the embedding and the first block: vocab {w.vocab_size}, hidden {d}, heads {heads}, "
                f"head size {dh}, feed-forward {f}, adapter {a})."
            )
    if heads * dh != d:
        raise SmoliteConversionError(
            f"{w.path}: heads x head size = {heads} x {dh} does not equal the hidden size {d} "
            f"(from '{w.block_groups[0]}/mha/query_dense/vars/0')."
        )


def _convert_array(kind: str, array: np.ndarray) -> list[np.ndarray]:
    if kind == "copy":
        return [array]
    if kind == "flatten":
        return [array.reshape(-1)]
    if kind == "kernel":
        return [array.T]
    if kind == "heads_in_kernel":  # [d, H, dh] -> [d, H*dh] -> [H*dh, d]
        return [array.reshape(array.shape[0], -1).T]
    if kind == "heads_out_kernel":  # [H, dh, d] -> [H*dh, d] -> [d, H*dh]
        return [array.reshape(-1, array.shape[-1]).T]
    if kind == "split_kernel":  # [d, 2f] -> value [f, d], gate [f, d]
        value, gate = np.split(array, 2, axis=1)
        return [value.T, gate.T]
    if kind == "split":
        return list(np.split(array, 2))
    raise AssertionError(kind)


def keras_to_state_dict(weights: KerasSmolite) -> dict[str, np.ndarray]:
    """Map the Keras arrays to `SmoliteForCausalLM` parameter names using the pattern tables above."""
    state_dict: dict[str, np.ndarray] = {}

    def apply(patterns, relative: str, array: np.ndarray, prefix: str) -> None:
        for pattern, targets, kind in patterns:
            match = re.fullmatch(pattern, relative)
            if match:
                fields = {key: SHORT_NAMES.get(value, value) for key, value in match.groupdict().items()}
                for target, value in zip(targets, _convert_array(kind, array)):
                    state_dict[prefix + target.format(**fields)] = np.ascontiguousarray(value, dtype=np.float32)
                return
        raise AssertionError(f"no conversion pattern for {relative}")

    for name, array in weights.arrays.items():
        if name.startswith("blocks/"):
            group, relative = name[len("blocks/") :].split("/", 1)
            index = weights.block_groups.index(f"blocks/{group}")
            apply(BLOCK_PATTERNS, relative, array, f"model.layers.{index}.")
        else:
            apply(TOP_LEVEL_PATTERNS, name, array, "")
    return state_dict


def keras_reference_logits(weights: KerasSmolite, input_ids: np.ndarray, rope_theta: float = 10000.0, eps: float = 1e-5) -> np.ndarray:
    """The original model's forward pass in float64 NumPy, straight from the Keras arrays (no padding mask).

    Independent of the PyTorch code: it is what the converter checks the converted folder against.
    """
    a = {name: value.astype(np.float64) for name, value in weights.arrays.items()}
    batch, seq_len = input_ids.shape
    heads, dh = weights.num_attention_heads, weights.head_dim

    def layer_norm(x, group):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * a[f"{group}/vars/0"] + a[f"{group}/vars/1"]

    inv_freq = (1.0 / rope_theta ** (np.arange(0, dh, 2) / dh)).astype(np.float32)
    angles = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]  # (T, dh/2)
    cos, sin = np.cos(angles).astype(np.float64), np.sin(angles).astype(np.float64)

    def rope(h):  # (B, T, d): per head, rotate features (2i, 2i+1) by t * w_i
        x = h.reshape(batch, seq_len, heads, dh // 2, 2)
        even, odd = x[..., 0], x[..., 1]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return np.stack([even * c - odd * s, even * s + odd * c], axis=-1).reshape(batch, seq_len, heads * dh)

    def gelu(x):
        from math import erf, sqrt

        return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))

    causal = np.triu(np.full((seq_len, seq_len), -np.inf), k=1)
    x = a[weights.embedding_path][input_ids]
    for g in weights.block_groups:
        h = layer_norm(x, f"{g}/ln1")
        r = rope(h)
        q = np.einsum("btd,dhk->bhtk", r, a[f"{g}/mha/query_dense/vars/0"]) + a[f"{g}/mha/query_dense/vars/1"][None, :, None]
        k = np.einsum("btd,dhk->bhtk", r, a[f"{g}/mha/key_dense/vars/0"]) + a[f"{g}/mha/key_dense/vars/1"][None, :, None]
        v = np.einsum("btd,dhk->bhtk", h, a[f"{g}/mha/value_dense/vars/0"]) + a[f"{g}/mha/value_dense/vars/1"][None, :, None]
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        o = np.einsum("bhtk,hkd->btd", probs @ v, a[f"{g}/mha/output_dense/vars/0"]) + a[f"{g}/mha/output_dense/vars/1"]
        o = o + gelu(o @ a[f"{g}/adapter_down/vars/0"] + a[f"{g}/adapter_down/vars/1"]) @ a[f"{g}/adapter_up/vars/0"] + a[f"{g}/adapter_up/vars/1"]
        x = x + o
        p = layer_norm(x, f"{g}/ln2") @ a[f"{g}/ffn/proj/vars/0"] + a[f"{g}/ffn/proj/vars/1"]
        value, gate = np.split(p, 2, axis=-1)
        x = x + (value * gate / (1.0 + np.exp(-gate))) @ a[f"{g}/ffn/out/vars/0"] + a[f"{g}/ffn/out/vars/1"]
    return layer_norm(x, weights.final_norm_group) @ a[weights.embedding_path].T


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise SmoliteConversionError(f"{output_dir}: exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise SmoliteConversionError(
            f"{output_dir}: the output folder exists and is not empty; choose another folder or pass "
            "--overwrite (overwrite=True) to replace it."
        )


def _move_into_place(tmp_dir: Path, output_dir: Path) -> None:
    """Replace `output_dir` by `tmp_dir` so that a crash leaves either the old folder or the new one, never a mix."""
    old = None
    if output_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.rmdir(old)
        os.rename(output_dir, old)
    os.rename(tmp_dir, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_conversion(weights: KerasSmolite, model, rope_theta: float, eps: float, seq_len: int) -> float:
    """Compare `model`'s logits with `keras_reference_logits` on a fixed random probe; return the max abs difference."""
    import torch

    rng = np.random.default_rng(0)
    probe = rng.integers(0, weights.vocab_size, size=(2, seq_len))
    reference = keras_reference_logits(weights, probe, rope_theta=rope_theta, eps=eps)
    with torch.no_grad():
        logits = model(torch.from_numpy(probe), use_cache=False).logits.double().numpy()
    difference = float(np.abs(logits - reference).max())
    scale = max(1.0, float(np.abs(reference).max()))
    if not difference <= VERIFY_TOLERANCE * scale:
        raise SmoliteConversionError(
            f"{weights.path}: the converted model does not reproduce the Keras forward pass: max |logit difference| "
            f"{difference:.3g} on a probe input (allowed {VERIFY_TOLERANCE * scale:.3g}). Nothing was written."
        )
    return difference


def convert_keras_to_hf(
    keras_weights: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_position_embeddings: int = 100,
    **config_kwargs,
) -> Path:
    """Convert a Keras `*.weights.h5` file into a folder that `AutoModelForCausalLM.from_pretrained` loads.

    Writes `config.json`, `model.safetensors`, `generation_config.json`, the model's source files (for
    `trust_remote_code` loading) and `conversion_report.json` (source file, its sha256, the verified difference). With `tokenizer` (the original SentencePiece `.model`), the folder also gets the
    converted tokenizer (`AutoTokenizer` loads it), and the special-token ids in the config are read from it; its
    vocabulary must have the weights' size. Extra keyword arguments go to `SmoliteConfig`.
    Returns the output folder. Raises `SmoliteConversionError` (a `ValueError`) for a file that is not a Smolite
    weights file, for an existing non-empty output folder (unless `overwrite`), and when the converted model does
    not reproduce the NumPy forward pass of the Keras weights.
    """
    import torch

    from .generation import smolite_generation_config
    from .modeling_smolite import SmoliteForCausalLM

    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    weights = read_keras_weights(keras_weights)
    smolite_tokenizer = None
    if tokenizer is not None:
        from .tokenization_smolite import SmoliteTokenizer

        smolite_tokenizer = SmoliteTokenizer.from_sentencepiece(tokenizer, model_max_length=max_position_embeddings)
        if len(smolite_tokenizer) != weights.vocab_size:
            raise SmoliteConversionError(
                f"{tokenizer}: the tokenizer has {len(smolite_tokenizer)} pieces but the weights in {weights.path} "
                f"have a vocabulary of {weights.vocab_size}; they do not belong together."
            )
        for name in ("pad", "unk", "bos", "sep", "eos"):
            config_kwargs.setdefault(f"{name}_token_id", getattr(smolite_tokenizer, f"{name}_token_id"))
    config = SmoliteConfig(
        vocab_size=weights.vocab_size,
        hidden_size=weights.hidden_size,
        num_hidden_layers=weights.num_hidden_layers,
        num_attention_heads=weights.num_attention_heads,
        intermediate_size=weights.intermediate_size,
        adapter_size=weights.adapter_size,
        max_position_embeddings=max_position_embeddings,
        **config_kwargs,
    )
    config.architectures = ["SmoliteForCausalLM"]
    state_dict = {name: torch.from_numpy(array) for name, array in keras_to_state_dict(weights).items()}
    model = SmoliteForCausalLM(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [name for name in missing if name != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise AssertionError(f"converter mapping out of date: missing {missing}, unexpected {unexpected}")
    model.generation_config = smolite_generation_config(config)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp_dir)
        if smolite_tokenizer is not None:
            smolite_tokenizer.save_pretrained(tmp_dir)
        reloaded = SmoliteForCausalLM.from_pretrained(tmp_dir).eval()
        difference = verify_conversion(
            weights,
            reloaded,
            rope_theta=config.rope_parameters["rope_theta"],
            eps=config.layer_norm_eps,
            seq_len=min(max_position_embeddings, 32),
        )
        report = {
            "keras_weights": Path(keras_weights).name,
            "keras_weights_sha256": hashlib.sha256(Path(keras_weights).read_bytes()).hexdigest(),
            "tokenizer": Path(tokenizer).name if tokenizer is not None else None,
            "max_abs_logit_difference": difference,
        }
        (tmp_dir / "conversion_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        _move_into_place(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return output_dir


__all__ = [
    "SmoliteConversionError",
    "convert_keras_to_hf",
    "keras_reference_logits",
    "keras_to_state_dict",
    "read_keras_weights",
]
