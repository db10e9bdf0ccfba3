"""Convert original Smolite Keras weights (`*.weights.h5`) into a Hugging Face model folder.

Usage:

```bash
smolite convert --keras-weights smolite.weights.h5 --output-dir smolite-hf
```

```python
from smolite_hf.convert_smolite_keras_to_hf import convert_keras_to_hf
convert_keras_to_hf("smolite.weights.h5", "smolite-hf")
```

Every size (vocabulary, hidden, blocks, heads, head size, feed-forward, adapter) is read from the weight shapes
(`SIZES_FROM_SHAPES`), so any size of the released family converts without a size table. The window
(`max_position_embeddings`, the config's default for every released size) and the special-token ids cannot be seen
in the weights: they default to the config's values and can be given.

`KEY_TABLE` lists every Keras dataset with the Hugging Face key(s) it becomes and the operations between them
(`Transpose`, `MergeHeads`, `Chunk`, in the spirit of transformers' `WeightConverter`): reading, mapping and shape
checks all follow from it, and the expected Keras shapes are those of `SmoliteForCausalLM` built on the meta device,
run back through the operations. The folder is written to a temporary folder beside the destination, reloaded,
checked against an independent NumPy forward pass of the Keras weights (`keras_reference_logits`, which reads the
Keras arrays directly and does not use the table), and only then renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .configuration_smolite import SmoliteConfig

# Group names in the Keras file: Keras numbers repeated layer names (`embedding_1`), and names blocks `gpt_block`,
# `gpt_block_1`, ... (block k is `gpt_block_<k>`; sorted numerically, so `_10` comes after `_9`).
EMBEDDING_GROUP = r"embedding(?:_\d+)?"  # under `layers/`
FINAL_NORM_GROUP = r"layer_normalization(?:_\d+)?"  # under `layers/`


class KerasToHf:
    """One step from Keras arrays to Hugging Face tensors, and back for shapes (as transformers' `ConversionOps`)."""

    def convert(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def keras_shapes(self, shapes: list[tuple[int, ...]], config: SmoliteConfig) -> list[tuple[int, ...]]:
        """The input shapes that give output `shapes`: how expected Keras shapes follow from the model's."""
        raise NotImplementedError


class Transpose(KerasToHf):
    """A Keras dense kernel is `[in, out]`, a torch `Linear` weight `[out, in]`."""

    def convert(self, arrays):
        return [array.T for array in arrays]

    def keras_shapes(self, shapes, config):
        return [tuple(reversed(shape)) for shape in shapes]


class MergeHeads(KerasToHf):
    """Axes `axis, axis + 1` (heads, head size) of a Keras attention kernel or bias become one axis, head-major."""

    def __init__(self, axis: int):
        self.axis = axis

    def convert(self, arrays):
        return [array.reshape(*array.shape[: self.axis], -1, *array.shape[self.axis + 2 :]) for array in arrays]

    def keras_shapes(self, shapes, config):
        heads = (config.num_attention_heads, config.head_dim)
        return [(*shape[: self.axis], *heads, *shape[self.axis + 1 :]) for shape in shapes]


class Chunk(KerasToHf):
    """One Keras array split into equal consecutive parts along `axis`, one per Hugging Face key."""

    def __init__(self, axis: int, parts: int = 2):
        self.axis, self.parts = axis, parts

    def convert(self, arrays):
        (array,) = arrays
        return list(np.split(array, self.parts, axis=self.axis))

    def keras_shapes(self, shapes, config):
        first = shapes[0]
        return [(*first[: self.axis], sum(shape[self.axis] for shape in shapes), *first[self.axis + 1 :])]


@dataclass(frozen=True)
class KeyRule:
    """A Keras dataset (`{embedding}`, `{final_norm}`: the top-level groups; `{block}`: each block group), the
    Hugging Face key(s) it becomes (`{i}`: the block index), and the operations between them, applied in order."""

    keras: str
    hf: tuple[str, ...]
    operations: tuple[KerasToHf, ...] = ()

    @property
    def per_block(self) -> bool:
        return "{block}" in self.keras


def _rule(keras: str, hf: str | tuple[str, ...], *operations: KerasToHf) -> KeyRule:
    return KeyRule(keras, (hf,) if isinstance(hf, str) else hf, operations)


_LAYER = "model.layers.{i}"
# Every dataset the converter reads, and what it becomes. Reading, the mapping and the shape checks all follow from
# this table; the expected shapes come from `SmoliteForCausalLM` built on the meta device.
KEY_TABLE: list[KeyRule] = [
    _rule("{embedding}/vars/0", "model.embed_tokens.weight"),  # also the tied output head
    _rule("{final_norm}/vars/0", "model.norm.weight"),
    _rule("{final_norm}/vars/1", "model.norm.bias"),
    _rule("{block}/ln1/vars/0", f"{_LAYER}.input_layernorm.weight"),
    _rule("{block}/ln1/vars/1", f"{_LAYER}.input_layernorm.bias"),
    # attention kernels [d, H, dh] and biases [H, dh]; the output kernel is [H, dh, d]
    _rule("{block}/mha/query_dense/vars/0", f"{_LAYER}.self_attn.q_proj.weight", MergeHeads(1), Transpose()),
    _rule("{block}/mha/query_dense/vars/1", f"{_LAYER}.self_attn.q_proj.bias", MergeHeads(0)),
    _rule("{block}/mha/key_dense/vars/0", f"{_LAYER}.self_attn.k_proj.weight", MergeHeads(1), Transpose()),
    _rule("{block}/mha/key_dense/vars/1", f"{_LAYER}.self_attn.k_proj.bias", MergeHeads(0)),
    _rule("{block}/mha/value_dense/vars/0", f"{_LAYER}.self_attn.v_proj.weight", MergeHeads(1), Transpose()),
    _rule("{block}/mha/value_dense/vars/1", f"{_LAYER}.self_attn.v_proj.bias", MergeHeads(0)),
    _rule("{block}/mha/output_dense/vars/0", f"{_LAYER}.self_attn.o_proj.weight", MergeHeads(0), Transpose()),
    _rule("{block}/mha/output_dense/vars/1", f"{_LAYER}.self_attn.o_proj.bias"),
    _rule("{block}/adapter_down/vars/0", f"{_LAYER}.adapter.down.weight", Transpose()),
    _rule("{block}/adapter_down/vars/1", f"{_LAYER}.adapter.down.bias"),
    _rule("{block}/adapter_up/vars/0", f"{_LAYER}.adapter.up.weight", Transpose()),
    _rule("{block}/adapter_up/vars/1", f"{_LAYER}.adapter.up.bias"),
    _rule("{block}/ln2/vars/0", f"{_LAYER}.post_attention_layernorm.weight"),
    _rule("{block}/ln2/vars/1", f"{_LAYER}.post_attention_layernorm.bias"),
    # SwiGLU input projection [d, 2f]: the first f columns are the value (up_proj), the last f the gate (gate_proj)
    _rule("{block}/ffn/proj/vars/0", (f"{_LAYER}.mlp.up_proj.weight", f"{_LAYER}.mlp.gate_proj.weight"),
          Chunk(axis=1), Transpose()),
    _rule("{block}/ffn/proj/vars/1", (f"{_LAYER}.mlp.up_proj.bias", f"{_LAYER}.mlp.gate_proj.bias"), Chunk(axis=0)),
    _rule("{block}/ffn/out/vars/0", f"{_LAYER}.mlp.down_proj.weight", Transpose()),
    _rule("{block}/ffn/out/vars/1", f"{_LAYER}.mlp.down_proj.bias"),
]

# The sizes the weights determine: (config field, dataset of the first block or a top-level group, its rank, axis).
SIZES_FROM_SHAPES: list[tuple[str, str, int, int]] = [
    ("vocab_size", "{embedding}/vars/0", 2, 0),
    ("hidden_size", "{embedding}/vars/0", 2, 1),
    ("num_attention_heads", "{block}/mha/query_dense/vars/0", 3, 1),
    ("intermediate_size", "{block}/ffn/out/vars/0", 2, 0),
    ("adapter_size", "{block}/adapter_down/vars/0", 2, 1),
]

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
    config: SmoliteConfig  # the sizes only (window and special ids are not in the weights)

    @property
    def groups(self) -> dict[str, str]:
        return {"embedding": self.embedding_path.rpartition("/vars/")[0], "final_norm": self.final_norm_group}

    def datasets(self, rule: KeyRule) -> list[tuple[int | None, str]]:
        """`(block index, HDF5 path)` of each dataset `rule` reads (index `None` for a top-level one)."""
        if rule.per_block:
            return [(index, rule.keras.format(block=group)) for index, group in enumerate(self.block_groups)]
        return [(None, rule.keras.format(**self.groups))]

    vocab_size = property(lambda self: self.config.vocab_size)
    hidden_size = property(lambda self: self.config.hidden_size)
    num_hidden_layers = property(lambda self: self.config.num_hidden_layers)
    num_attention_heads = property(lambda self: self.config.num_attention_heads)
    head_dim = property(lambda self: self.config.head_dim)
    intermediate_size = property(lambda self: self.config.intermediate_size)
    adapter_size = property(lambda self: self.config.adapter_size)


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


def _read_dataset(h5file, name: str, file: Path) -> np.ndarray:
    if name not in h5file or not hasattr(h5file[name], "shape"):
        raise SmoliteConversionError(f"{file}: not a Smolite Keras weights file: the HDF5 dataset '{name}' is missing.")
    try:
        return np.asarray(h5file[name][()], dtype=np.float32)
    except (OSError, TypeError, ValueError) as err:
        raise SmoliteConversionError(
            f"{file}: the HDF5 dataset '{name}' cannot be read (truncated or corrupt file?): {err}"
        ) from err


def _shape(array: np.ndarray, name: str, ndim: int, path: Path) -> tuple[int, ...]:
    if array.ndim != ndim or 0 in array.shape:
        raise SmoliteConversionError(
            f"{path}: the HDF5 dataset '{name}' has shape {list(array.shape)}, expected {ndim} non-empty axes."
        )
    return array.shape


def _sizes_config(h5file, groups: dict[str, str], first_block: str, num_blocks: int, path: Path) -> SmoliteConfig:
    """The config whose sizes the weight shapes give (`SIZES_FROM_SHAPES`); special ids are left unset."""
    sizes = {}
    for field, template, ndim, axis in SIZES_FROM_SHAPES:
        name = template.format(block=first_block, **groups)
        sizes[field] = _shape(_read_dataset(h5file, name, path), name, ndim, path)[axis]
    query = f"{first_block}/mha/query_dense/vars/0"
    head_dim = h5file[query].shape[2]
    if sizes["num_attention_heads"] * head_dim != sizes["hidden_size"]:
        raise SmoliteConversionError(
            f"{path}: heads x head size = {sizes['num_attention_heads']} x {head_dim} does not equal the hidden size "
            f"{sizes['hidden_size']} (from '{query}')."
        )
    no_ids = dict.fromkeys(("pad_token_id", "unk_token_id", "bos_token_id", "sep_token_id", "eos_token_id"))
    try:
        return SmoliteConfig(**sizes, num_hidden_layers=num_blocks, **no_ids)
    except ValueError as err:
        raise SmoliteConversionError(f"{path}: the sizes read from the weight shapes make no Smolite model: {err}") from err


def _expected_keras_shape(rule: KeyRule, index: int | None, model_shapes: dict, config: SmoliteConfig) -> tuple:
    shapes = [model_shapes[key.format(i=index)] for key in rule.hf]
    for operation in reversed(rule.operations):
        shapes = operation.keras_shapes(shapes, config)
    (shape,) = shapes
    return tuple(shape)


def read_keras_weights(path: str | os.PathLike) -> KerasSmolite:
    """Read and validate a Keras 3 Smolite weights file, deriving every size from the weight shapes.

    Reads exactly the datasets of `KEY_TABLE`, each checked against the shape that `SmoliteForCausalLM` (built on
    the meta device from the sizes) implies for it. Raises `SmoliteConversionError` naming the file and the missing
    or mis-shaped HDF5 path. A top-level `optimizer` group (present when the model was compiled and trained) is
    ignored.
    """
    import h5py
    import torch

    from .modeling_smolite import SmoliteForCausalLM

    path = Path(path)
    if not path.is_file():
        raise SmoliteConversionError(f"{path}: no such file (expected a Keras '*.weights.h5' file).")
    try:
        h5file = h5py.File(path, "r")
    except OSError as err:
        raise SmoliteConversionError(f"{path}: not a readable HDF5 file ({err}).") from err

    with h5file:
        groups = {
            "embedding": _find_one(h5file, "layers", EMBEDDING_GROUP, path),
            "final_norm": _find_one(h5file, "layers", FINAL_NORM_GROUP, path),
        }
        if "blocks" not in h5file or not hasattr(h5file["blocks"], "keys") or not len(h5file["blocks"]):
            raise SmoliteConversionError(
                f"{path}: not a Smolite Keras weights file: the HDF5 group 'blocks' is missing or empty."
            )
        block_groups = [f"blocks/{name}" for name in sorted(h5file["blocks"].keys(), key=_block_order)]
        config = _sizes_config(h5file, groups, block_groups[0], len(block_groups), path)
        weights = KerasSmolite(path=path, arrays={}, block_groups=block_groups,
                               embedding_path=f"{groups['embedding']}/vars/0", final_norm_group=groups["final_norm"],
                               config=config)
        with torch.device("meta"):
            model_shapes = {name: tuple(t.shape) for name, t in SmoliteForCausalLM(config).state_dict().items()}
        sizes = (f"vocab {config.vocab_size}, hidden {config.hidden_size}, heads {config.num_attention_heads}, head "
                 f"size {config.head_dim}, feed-forward {config.intermediate_size}, adapter {config.adapter_size}")
        for rule in KEY_TABLE:
            for index, name in weights.datasets(rule):
                array = _read_dataset(h5file, name, path)
                expected = _expected_keras_shape(rule, index, model_shapes, config)
                if array.shape != expected:
                    raise SmoliteConversionError(
                        f"{path}: the HDF5 dataset '{name}' has shape {list(array.shape)}, expected {list(expected)} "
                        f"(sizes read from the embedding and the first block: {sizes})."
                    )
                weights.arrays[name] = array
    return weights


def keras_to_state_dict(weights: KerasSmolite) -> dict[str, np.ndarray]:
    """Map the Keras arrays to `SmoliteForCausalLM` parameter names by applying `KEY_TABLE`'s operations."""
    state_dict: dict[str, np.ndarray] = {}
    for rule in KEY_TABLE:
        for index, name in weights.datasets(rule):
            arrays = [weights.arrays[name]]
            for operation in rule.operations:
                arrays = operation.convert(arrays)
            for key, array in zip(rule.hf, arrays, strict=True):
                state_dict[key.format(i=index)] = np.ascontiguousarray(array, dtype=np.float32)
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
    """Compare `model`'s logits with `keras_reference_logits` on a fixed random probe of `seq_len` positions (the
    converter passes the whole window); return the max abs difference."""
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
    max_position_embeddings: int = SmoliteConfig.max_position_embeddings,
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

    from .folders import sha256_of, write_weight_checksums
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
        write_weight_checksums(tmp_dir)
        reloaded = SmoliteForCausalLM.from_pretrained(tmp_dir).eval()
        difference = verify_conversion(
            weights,
            reloaded,
            rope_theta=config.rope_parameters["rope_theta"],
            eps=config.layer_norm_eps,
            seq_len=max_position_embeddings,  # every position of the window, rotary angles and masks included
        )
        report = {
            "keras_weights": Path(keras_weights).name,
            "keras_weights_sha256": sha256_of(keras_weights),
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
    "KEY_TABLE",
    "SmoliteConversionError",
    "convert_keras_to_hf",
    "keras_reference_logits",
    "keras_to_state_dict",
    "read_keras_weights",
]
