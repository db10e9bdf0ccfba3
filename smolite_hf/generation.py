"""Generation defaults that reproduce the original Smolite decoding with `generate()`'s own logits processors.

The original decodes with a hand-written loop (temperature, nucleus sampling, a penalty of 5 on the `<end>` logit
and of 10 on `<pad>`, optionally a repetition penalty). Every piece has a standard processor:

| original | `GenerationConfig` field |
|---|---|
| `<end>` logit - 5 | `sequence_bias=[[[end_id], -5.0]]` |
| `<pad>` logit - 10 | `suppress_tokens=[pad_id]` (never generated) |
| temperature, top-p (the crossing token kept) | `temperature`, `top_p`, `top_k=0` |
| repetition penalty 1.1 | `repetition_penalty=1.1` (the standard form: positive logits divided, negative multiplied; the original divided every logit, which raised negative ones) |
| stop at `<end>` once the sequence has `min_len` ids | `eos_token_id=end_id`, `min_length=min_len` (prompt included, as in the original) |
| at most ~100 new ids | `max_new_tokens=100` |
"""

from transformers import GenerationConfig

PRESETS = {
    # The streaming chat variant of the original (`generate_max`): the default.
    "chat": {"temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.1, "min_length": 10, "max_new_tokens": 100},
    # The original `generate`: cooler sampling, a longer minimum, no repetition penalty.
    "original": {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.0, "min_length": 20, "max_new_tokens": 98},
}
# Greedy decoding, laid over a preset (`smolite chat --greedy`, `"do_sample": false` in `smolite serve`): always the
# most likely token; the sampling fields are set to their neutral values so that generate() does not warn about them.
GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}


def smolite_generation_config(config, preset: str = "chat", **overrides) -> GenerationConfig:
    """The seed's decoding as a `GenerationConfig` for a model `config` (special ids are taken from it).

    `preset` is `"chat"` (temperature 0.5, top-p 0.9, repetition penalty 1.1, min length 10) or `"original"`
    (temperature 0.2, top-p 0.9, no repetition penalty, min length 20). Keyword arguments override single fields.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown generation preset {preset!r}; choose one of {sorted(PRESETS)}.")
    fields = {
        "do_sample": True,
        "top_k": 0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "sequence_bias": [[[config.eos_token_id], -5.0]],
        "suppress_tokens": [config.pad_token_id],
        **PRESETS[preset],
        **overrides,
    }
    return GenerationConfig(**fields)


__all__ = ["GREEDY", "PRESETS", "smolite_generation_config"]
