"""Write a Smolite model's weights in the original Keras 3 layout (the inverse of the converter, written apart)."""

import h5py
import numpy as np


def block_name(index: int) -> str:
    return "gpt_block" if index == 0 else f"gpt_block_{index}"


def write_keras_weights(model, path, optimizer: bool = False) -> None:
    config = model.config
    heads, dh, d = config.num_attention_heads, config.head_dim, config.hidden_size
    params = {name: p.detach().numpy().astype(np.float32) for name, p in model.state_dict().items()}

    def put(f, name, array):
        f.create_dataset(name, data=np.ascontiguousarray(array, dtype=np.float32))

    with h5py.File(path, "w") as f:
        f.create_group("vars")
        put(f, "layers/embedding/vars/0", params["model.embed_tokens.weight"])
        put(f, "layers/layer_normalization/vars/0", params["model.norm.weight"])
        put(f, "layers/layer_normalization/vars/1", params["model.norm.bias"])
        for i in range(config.num_hidden_layers):
            p = lambda name: params[f"model.layers.{i}.{name}"]  # noqa: E731
            g = f"blocks/{block_name(i)}"
            put(f, f"{g}/ln1/vars/0", p("input_layernorm.weight"))
            put(f, f"{g}/ln1/vars/1", p("input_layernorm.bias"))
            for keras, ours in (("query", "q"), ("key", "k"), ("value", "v")):
                put(f, f"{g}/mha/{keras}_dense/vars/0", p(f"self_attn.{ours}_proj.weight").T.reshape(d, heads, dh))
                put(f, f"{g}/mha/{keras}_dense/vars/1", p(f"self_attn.{ours}_proj.bias").reshape(heads, dh))
            put(f, f"{g}/mha/output_dense/vars/0", p("self_attn.o_proj.weight").T.reshape(heads, dh, d))
            put(f, f"{g}/mha/output_dense/vars/1", p("self_attn.o_proj.bias"))
            put(f, f"{g}/adapter_down/vars/0", p("adapter.down.weight").T)
            put(f, f"{g}/adapter_down/vars/1", p("adapter.down.bias"))
            put(f, f"{g}/adapter_up/vars/0", p("adapter.up.weight").T)
            put(f, f"{g}/adapter_up/vars/1", p("adapter.up.bias"))
            put(f, f"{g}/ln2/vars/0", p("post_attention_layernorm.weight"))
            put(f, f"{g}/ln2/vars/1", p("post_attention_layernorm.bias"))
            put(f, f"{g}/ffn/proj/vars/0", np.concatenate([p("mlp.up_proj.weight"), p("mlp.gate_proj.weight")]).T)
            put(f, f"{g}/ffn/proj/vars/1", np.concatenate([p("mlp.up_proj.bias"), p("mlp.gate_proj.bias")]))
            put(f, f"{g}/ffn/out/vars/0", p("mlp.down_proj.weight").T)
            put(f, f"{g}/ffn/out/vars/1", p("mlp.down_proj.bias"))
        if optimizer:
            put(f, "optimizer/vars/0", np.array(1000.0))
            put(f, "optimizer/vars/1", np.array(1e-4))
            for j, array in enumerate(params.values()):
                put(f, f"optimizer/vars/{2 + j}", np.zeros_like(array))
