"""PyTorch Smolite model, a faithful port of the original Keras implementation.

Differences from Llama, each matching the original:
- the rotary embedding (interleaved pairs, per head) is applied to the normalised layer input *before* the query and
  key projections, and the values are projected from the unrotated input;
- every projection has a bias, the norms are LayerNorms with bias;
- a residual bottleneck adapter with exact (erf) GELU follows the attention output projection;
- the SwiGLU feed-forward takes its value and gate from the halves of one projection in the original (here split into
  `up_proj` = value and `gate_proj` = gate, so the module names are Llama's);
- the output projection is tied to the embedding, and the model's own loss is label-smoothed cross entropy
  (`loss_smolite.py`, through `self.loss_function`; `config.fuse_linear_cross_entropy` fuses it with the head).

The file holds the model only, in Llama's order: rotary embedding, adapter, MLP, attention, decoder layer, pretrained
base, backbone, causal-LM head.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_smolite import SmoliteConfig
from .loss_smolite import smolite_causal_lm_loss


class SmoliteRotaryEmbedding(nn.Module):
    """cos/sin tables of the original rotary embedding: per head, features `2i` and `2i+1` form a pair."""

    inv_freq: torch.Tensor

    def __init__(self, config: SmoliteConfig):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: SmoliteConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """`w_i = theta^(-2i / head_dim)`, computed in float64 and rounded to float32 as the original does."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
        return (1.0 / (base**exponent)).float(), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, signed_sin)`, each `(B, T, 1, dh)`: pair `i` occupies features `2i, 2i+1`; `signed_sin` is
        `(-sin, +sin)` on each pair, so that `apply_rotary_to_input` needs only a swap within pairs."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # (B, T, dh/2)
        cos = freqs.cos() * self.attention_scaling
        sin = freqs.sin() * self.attention_scaling
        cos = torch.stack((cos, cos), dim=-1).flatten(-2).unsqueeze(2)  # (B, T, 1, dh)
        signed_sin = torch.stack((-sin, sin), dim=-1).flatten(-2).unsqueeze(2)
        return cos.to(dtype=x.dtype), signed_sin.to(dtype=x.dtype)


def apply_rotary_to_input(hidden_states: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate a layer input `(B, T, H * dh)` head by head: each pair `(a, b)` becomes
    `(a cos - b sin, b cos + a sin)`, with `cos`/`signed_sin` from `SmoliteRotaryEmbedding` (`(B, T, 1, dh)`).

    The same products and sums as the textbook form, so bit-identical to it; `(a, b) -> (b, a)` is one `flip`.
    """
    batch, seq_len, width = hidden_states.shape
    pairs = hidden_states.view(batch, seq_len, -1, cos.shape[-1] // 2, 2)  # (B, T, H, dh/2, 2)
    swapped = pairs.flip(-1).view(batch, seq_len, -1, cos.shape[-1])  # (B, T, H, dh): (b, a) per pair
    per_head = hidden_states.view(batch, seq_len, -1, cos.shape[-1])
    return (per_head * cos + swapped * signed_sin).view(batch, seq_len, width)


class SmoliteAdapter(nn.Module):
    """Residual bottleneck on the attention output: `x + up(GELU(down(x)))`, exact (erf) GELU."""

    def __init__(self, config: SmoliteConfig):
        super().__init__()
        self.down = nn.Linear(config.hidden_size, config.adapter_size, bias=True)
        self.up = nn.Linear(config.adapter_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class SmoliteMLP(nn.Module):
    """SwiGLU: `down_proj(up_proj(x) * SiLU(gate_proj(x)))`, all with biases."""

    def __init__(self, config: SmoliteConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.up_proj(x) * F.silu(self.gate_proj(x)))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Tq, Tk)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, Tq, H, dh)
    return attn_output, attn_weights


def attention_in_float32(query: torch.Tensor, implementation: str) -> bool:
    """Whether sdpa runs in float32 here: under CPU bfloat16 autocast. There torch's bfloat16 flash attention is
    slower than float32, forward and backward, on both CPU kinds measured (`benchmarks/bench_attention_dtype.py`,
    seed size: 0.93-0.96x the step time with float32 attention on AMD Zen 5 with avx512_bf16, 0.87-0.90x on an
    Intel Xeon with AMX). Outside CPU autocast attention keeps the dtype it is given."""
    return (implementation == "sdpa" and query.device.type == "cpu" and query.dtype == torch.bfloat16
            and torch.is_autocast_enabled("cpu"))


class SmoliteAttention(nn.Module):
    """Multi-head attention whose queries and keys are projected from the rotated input, values from the plain one.

    Keys and values depend only on their own position's input, so caching the projected keys and values is exact.
    """

    def __init__(self, config: SmoliteConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        width = config.num_attention_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=True)

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        rotated = apply_rotary_to_input(hidden_states, *position_embeddings)
        query_states = self.q_proj(rotated).view(hidden_shape).transpose(1, 2)  # (B, H, T, dh)
        key_states = self.k_proj(rotated).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        def attend(query, key, value):
            return attention_interface(
                self,
                query,
                key,
                value,
                attention_mask,
                dropout=0.0 if not self.training else self.attention_dropout,
                scaling=self.scaling,
                **kwargs,
            )

        if attention_in_float32(query_states, self.config._attn_implementation):
            with torch.autocast("cpu", enabled=False):
                attn_output, attn_weights = attend(query_states.float(), key_states.float(), value_states.float())
            attn_output = attn_output.to(query_states.dtype)
        else:
            attn_output, attn_weights = attend(query_states, key_states, value_states)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class SmoliteDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: SmoliteConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SmoliteAttention(config=config, layer_idx=layer_idx)
        self.adapter = SmoliteAdapter(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SmoliteMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        if self.training:  # nn.Dropout is the identity in eval mode; skipping the call matters when decoding
            attn_output = self.dropout(attn_output)
        hidden_states = hidden_states + self.adapter(attn_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        if self.training:
            mlp_output = self.dropout(mlp_output)
        return hidden_states + mlp_output


class SmolitePreTrainedModel(PreTrainedModel):
    config: SmoliteConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SmoliteDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": SmoliteDecoderLayer,
        "attentions": SmoliteAttention,
    }

    def save_pretrained(self, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`; a folder saved with remote code maps every Auto class Smolite has
        (`AutoModel` too, which vLLM's and SGLang's transformers backends load), not only the saved model's own."""
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_smolite.SmoliteModel",
                "AutoModelForCausalLM": "modeling_smolite.SmoliteForCausalLM",
            }
        return super().save_pretrained(*args, **kwargs)


class SmoliteModel(SmolitePreTrainedModel):
    def __init__(self, config: SmoliteConfig):
        super().__init__(config)
        self.vocab_size = config.vocab_size
        # No padding_idx: the original trains every embedding row, <pad> included.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [SmoliteDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = SmoliteRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, d)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count from each sequence's first real token (the mask covers past and current tokens), so
            # left-padded batches are positioned like unpadded sequences.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class SmoliteForCausalLM(SmolitePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _fsdp_plan = {"lm_head": "keep_full_weight"}

    def __init__(self, config: SmoliteConfig):
        super().__init__(config)
        self.model = SmoliteModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.loss_function = smolite_causal_lm_loss  # PreTrainedModel's hook; `loss_type` stays "ForCausalLM"
        self.post_init()


    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        skip_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids to predict, in the usual causal-LM alignment (the model shifts them: logits at position `t`
            are scored against `labels[t + 1]`); -100 marks positions without a target. The loss is the
            label-smoothed cross entropy with `config.label_smoothing`, a token-level mean over the batch (over all
            gradient-accumulation micro-batches when the Trainer passes `num_items_in_batch`).
        skip_logits (`bool`, *optional*):
            Compute the output projection only at the positions that have a target, together with the loss, and
            return no `logits` (`None`): the fused head-plus-loss of `loss_smolite.py`. The default is
            `config.fuse_linear_cross_entropy` in training mode with labels (on unless the config turns it off),
            and `False` otherwise; pass it to override that choice for one call (`False` gives training-mode logits).

        Example:

        ```python
        >>> import torch
        >>> from smolite_hf import SmoliteConfig, SmoliteForCausalLM
        >>> model = SmoliteForCausalLM(SmoliteConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
        ...                                          num_attention_heads=4, intermediate_size=64)).eval()
        >>> ids = torch.tensor([[5, 2, 7, 9, 3, 11, 12, 4]])
        >>> labels = torch.tensor([[-100, -100, -100, -100, -100, 11, 12, 4]])
        >>> out = model(ids, labels=labels)
        >>> out.logits.shape
        torch.Size([1, 8, 100])
        ```
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)  # (B, T_kept, d)
        has_targets = labels is not None or kwargs.get("shift_labels") is not None
        if skip_logits is None:
            skip_logits = self.config.fuse_linear_cross_entropy and self.training and has_targets
        elif skip_logits and not has_targets:
            raise ValueError("skip_logits=True computes only the loss; pass labels (or shift_labels).")

        logits = loss = None
        loss_kwargs = dict(vocab_size=self.config.vocab_size, label_smoothing=self.config.label_smoothing, **kwargs)
        if skip_logits:
            loss = self.loss_function(labels=labels, hidden_states=hidden_states, lm_head=self.lm_head, **loss_kwargs)
        else:
            logits = self.lm_head(hidden_states)  # (B, T_kept, V)
            if has_targets:
                loss = self.loss_function(logits=logits, labels=labels, **loss_kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["SmoliteForCausalLM", "SmoliteModel", "SmolitePreTrainedModel"]
