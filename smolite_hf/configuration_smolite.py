"""Smolite model configuration, with the named size presets of the Smolite family."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

# The architecture of each named size; every other field keeps its default (vocabulary 72000, window 100, ...).
SIZE_PRESETS: dict[str, dict[str, int]] = {
    # the released "Small" of the original Keras model (24.9M parameters with the 72000-piece vocabulary)
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024, adapter_size=64),
    "mini": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, adapter_size=32),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, adapter_size=16),
}
# Other names of a preset: "seed" is what the seed's recipe (and `smolite train --size seed`) called the released Small.
SIZE_ALIASES: dict[str, str] = {"seed": "small"}


@strict
class SmoliteConfig(PreTrainedConfig):
    r"""
    Configuration of a Smolite model: a small decoder-only transformer for Korean everyday chat.

    The defaults are the released "Small" size of the original Keras model (vocabulary 72000, hidden 256, 6 blocks,
    8 heads, SwiGLU inner size 1024, a window of 100 positions); `SmoliteConfig.from_size("mini")` gives another
    size of `SIZE_PRESETS`. Field names follow transformers; the original Keras constructor names are accepted as
    aliases and can be read back under either name:

    | original (Keras) | here |
    |---|---|
    | `d_model` | `hidden_size` |
    | `n_layers` | `num_hidden_layers` |
    | `num_heads` | `num_attention_heads` |
    | `d_ff` | `intermediate_size` |
    | `seq_len`, `max_len` | `max_position_embeddings` |
    | `dropout_rate` | `hidden_dropout` |
    | `adapter_dim` | `adapter_size` |
    | `layer_norm_epsilon` | `layer_norm_eps` |

    Args:
        vocab_size: number of SentencePiece pieces.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of decoder blocks.
        num_attention_heads: attention heads; `hidden_size` must be a multiple of it.
        intermediate_size: SwiGLU inner size (the value and the gate are each this wide).
        max_position_embeddings: the window the model was trained on (positions `0 .. max_position_embeddings - 1`).
        adapter_size: width of the residual bottleneck adapter on the attention output.
        hidden_dropout: dropout on the attention output (before the adapter) and on the feed-forward output.
        attention_dropout: dropout on the attention probabilities (the original uses none).
        layer_norm_eps: epsilon of every LayerNorm.
        rope_parameters: rotary settings; `rope_theta` (legacy keyword accepted) is the base, 10000 by default.
        initializer_range: standard deviation of the normal initialisation of linear and embedding weights.
        label_smoothing: epsilon of the label-smoothed cross entropy the model computes when given `labels`.
        fuse_linear_cross_entropy: in training mode with `labels`, compute the output head only at the positions
            that have a target, chunk by chunk together with the loss (`loss_smolite.fused_linear_causal_lm_loss`),
            and return no `logits`. The loss and gradients are those of the plain computation; a training step is
            about 2x faster at the released size (`benchmarks/bench_vs_llama.py`) and never holds the
            `(batch, length, vocab)` logits. On by default, which is also what a `config.json` written before this
            field existed gets. Evaluation mode always computes full logits; `model(..., skip_logits=...)` overrides
            the choice for one call.
        tie_word_embeddings: the output projection is the embedding matrix (as in the original).
        pad_token_id, bos_token_id, sep_token_id, eos_token_id, unk_token_id: ids of `<pad>`, `<start>`, `<sep>`,
            `<end>` and `<unk>`. The converter reads them from the tokenizer when one is given.

    Example:

    ```python
    >>> from smolite_hf import SmoliteConfig, SmoliteForCausalLM
    >>> config = SmoliteConfig(d_model=64, n_layers=2, num_heads=4, d_ff=128, vocab_size=1000)
    >>> config.hidden_size, config.d_model
    (64, 64)
    >>> model = SmoliteForCausalLM(config)
    ```
    """

    model_type = "smolite"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "d_model": "hidden_size",
        "n_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "d_ff": "intermediate_size",
        "seq_len": "max_position_embeddings",
        "max_len": "max_position_embeddings",
        "dropout_rate": "hidden_dropout",
        "adapter_dim": "adapter_size",
        "layer_norm_epsilon": "layer_norm_eps",
    }
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 72000
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    max_position_embeddings: int = 100
    adapter_size: int = 64
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    rope_parameters: RopeParameters | dict | None = None
    initializer_range: float = 0.02
    label_smoothing: float = 0.1
    fuse_linear_cross_entropy: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    unk_token_id: int | None = 1
    bos_token_id: int | None = 2
    sep_token_id: int | None = 3
    eos_token_id: int | list[int] | None = 4

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # applies the Keras aliases given as keywords, folds `rope_theta`
        self._check_values()

    @classmethod
    def from_size(cls, name: str, **overrides) -> "SmoliteConfig":
        """The config of a named size (`SIZE_PRESETS`, or an alias in `SIZE_ALIASES`), with `overrides` applied.

        ```python
        >>> SmoliteConfig.from_size("mini", vocab_size=1500).hidden_size
        128
        ```
        """
        preset = SIZE_PRESETS.get(SIZE_ALIASES.get(name, name))
        if preset is None:
            sizes = ", ".join(
                f"{size!r} (hidden {p['hidden_size']}, {p['num_hidden_layers']} layers)"
                for size, p in SIZE_PRESETS.items()
            )
            aliases = ", ".join(f"{alias!r} = {size!r}" for alias, size in SIZE_ALIASES.items())
            raise ValueError(f"Unknown Smolite size {name!r}; choose one of {sizes} (aliases: {aliases}).")
        return cls(**{**preset, **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    def _field(self, name: str) -> str:
        """`hidden_size (d_model)`: the field's name with its Keras aliases, for error messages."""
        aliases = [alias for alias, canonical in self.attribute_map.items() if canonical == name]
        return f"{name} ({', '.join(aliases)})" if aliases else name

    def _check_values(self):
        sizes = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "adapter_size",
        )
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SmoliteConfig.{self._field(name)} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"SmoliteConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); the head size would be {self.hidden_size / self.num_attention_heads}."
            )
        if self.head_dim % 2:
            raise ValueError(
                f"SmoliteConfig: the head size hidden_size / num_attention_heads = {self.head_dim} must be even "
                "(rotary embeddings rotate pairs of features)."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"SmoliteConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}.")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SmoliteConfig.{self._field(name)} must be in [0, 1), got {value!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"SmoliteConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        for name in ("pad_token_id", "unk_token_id", "bos_token_id", "sep_token_id", "eos_token_id"):
            value = getattr(self, name)
            for token_id in value if isinstance(value, list) else [value]:
                if token_id is not None and not 0 <= token_id < self.vocab_size:
                    raise ValueError(
                        f"SmoliteConfig.{name} = {token_id} is outside the vocabulary [0, {self.vocab_size})."
                    )

    def validate_architecture(self):
        """Re-checked by `@strict` when the config is saved, after fields may have been changed by assignment."""
        self._check_values()


__all__ = ["SIZE_ALIASES", "SIZE_PRESETS", "SmoliteConfig"]
