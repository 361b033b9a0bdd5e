"""HF Llama (LlamaForCausalLM, LlamaModel) <-> zoo.models.llama.Llama.

Weights map one to one (nn.Linear on both sides); transformers' q/k rows are already in the
half-rotation RoPE layout zoo uses. gate_proj is the activated branch (zoo `mlp.fc1`), up_proj the
linear one (`mlp.gate`), down_proj `mlp.fc2`. Grouped-query attention: num_key_value_heads becomes
num_kv_heads. Supported: rope_type "default", "linear", "dynamic" and "llama3" (Llama 3.1 / 3.2; zoo's
rope_scaling; YaRN, LongRoPE and others are refused), hidden_act silu,
no attention / MLP biases. LlamaModel maps with a head tied to the embeddings (forward_features =
last_hidden_state).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.position import ROPE_SCALINGS, check_rope_scaling
from ..models.llama import Llama, LlamaConfig
from ._common import first_id, generation_ids, hf_generation_settings, hf_sampling, load_into, strip_prefix

_LAYER = {
    "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v", "self_attn.o_proj": "attn.proj",
    "mlp.gate_proj": "mlp.fc1", "mlp.up_proj": "mlp.gate", "mlp.down_proj": "mlp.fc2",
    "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
}
_TOP = {"embed_tokens": "wte", "norm": "blocks.norm"}


def _rope(hf) -> tuple[float, dict | None, int]:
    """(rope_theta, zoo's rope_scaling, max_positions) of an HF Llama config. transformers 5 writes
    `rope_parameters` (rope_type, rope_theta, ...); older configs `rope_scaling` (type or rope_type) and `rope_theta`."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    scaling = getattr(hf, "rope_scaling", None)
    field = "rope_parameters" if params else "rope_scaling"
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))
    max_positions = hf.max_position_embeddings
    if kind == "default":
        return theta, None, max_positions
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"zoo Llama cannot convert {field}.rope_type={kind!r} (config.json's rope_scaling or "
                         f"rope_parameters); supported: 'default', {', '.join(map(repr, ROPE_SCALINGS))}")
    declared = {"rope_type": kind, **{k: params[k] for k in ROPE_SCALINGS[kind] if k in params}}
    if kind == "dynamic":  # transformers scales beyond max_position_embeddings, up to no limit: zoo declares factor x it
        declared["original_max_position_embeddings"] = max_positions
        max_positions = int(max_positions * params.get("factor", 1))
    elif kind == "llama3":  # transformers' default where the config leaves it out
        declared.setdefault("original_max_position_embeddings",
                            getattr(hf, "original_max_position_embeddings", None) or max_positions)
    return theta, check_rope_scaling(declared, field), max_positions


def hf_rope_parameters(c: LlamaConfig) -> tuple[dict, int]:
    """(rope_parameters, max_position_embeddings) of transformers' LlamaConfig for zoo's config: a "dynamic"
    scaling starts beyond transformers' max_position_embeddings, its original length."""
    scaling = dict(c.rope_scaling or {"rope_type": "default"})
    max_positions = c.max_positions
    if scaling["rope_type"] == "dynamic":
        max_positions = scaling.pop("original_max_position_embeddings")
    return {**scaling, "rope_theta": c.rope_theta}, max_positions


def zoo_config(hf, tied: bool, generation_config=None) -> LlamaConfig:
    if hf.hidden_act not in ("silu", "swish"):
        raise ValueError(f"zoo Llama uses SwiGLU (silu); this config has hidden_act={hf.hidden_act!r}")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("zoo Llama has no biases; this config sets attention_bias or mlp_bias")
    heads = hf.num_attention_heads
    theta, scaling, max_positions = _rope(hf)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    eos, pad = generation_ids(hf, generation_config)  # every id of a list ends generation (Llama 3)
    pad = pad if pad is not None else (first_id(eos) if eos is not None else 0)  # generate pads with EOS
    return LlamaConfig(
        vocab_size=hf.vocab_size, dim=hf.hidden_size, depth=hf.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=None if head_dim == hf.hidden_size // heads else head_dim, mlp_hidden=hf.intermediate_size,
        norm_eps=hf.rms_norm_eps, rope_theta=theta, rope_scaling=scaling, max_positions=max_positions, tie_word_embeddings=tied,
        attn_dropout=getattr(hf, "attention_dropout", 0.0), init_std=hf.initializer_range,
        bos_token_id=hf.bos_token_id if hf.bos_token_id is not None else 0, eos_token_id=eos, pad_token_id=pad,
        sampling=hf_sampling(generation_config),
    )


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None, generation_config=None) -> Llama:
    if arch not in (None, "LlamaForCausalLM", "LlamaModel"):
        raise ValueError(f"no zoo Llama for {arch}; supported: LlamaForCausalLM, LlamaModel")
    sd = dict(sd)
    head = sd.pop("lm_head.weight", None)
    base = strip_prefix(sd, "model.")
    tied = bool(getattr(hf, "tie_word_embeddings", False)) or head is None
    model = Llama(zoo_config(hf, tied, generation_config))
    out, unused = {}, []
    for k, v in base.items():
        name, _, part = k.rpartition(".")
        if name.startswith("layers."):
            i, rest = name[len("layers."):].split(".", 1)
            if rest in _LAYER:
                out[f"blocks.blocks.{i}.{_LAYER[rest]}.{part}"] = v
                continue
        elif name in _TOP:
            out[f"{_TOP[name]}.{part}"] = v
            continue
        elif k.startswith("rotary_emb."):
            continue  # non-persistent inv_freq buffers some checkpoints carry
        unused.append(k)
    if unused:
        raise ValueError(f"HF Llama weights with no zoo equivalent: {', '.join(sorted(unused)[:10])}")
    out["lm_head.weight"] = out["wte.weight"] if tied else head
    return load_into(model, out)


def to_hf(model: Llama, out_dir: Path) -> None:
    import transformers

    c = model.config
    head_dim = c.head_dim or c.dim // c.num_heads
    rope_parameters, max_positions = hf_rope_parameters(c)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.mlp_hidden, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads or c.num_heads, head_dim=head_dim,
        hidden_act="silu", max_position_embeddings=max_positions, rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, rope_parameters=rope_parameters,
        attention_dropout=c.attn_dropout, initializer_range=c.init_std,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    inv_layer = {z: h for h, z in _LAYER.items()}
    inv_top = {z: h for h, z in _TOP.items()}
    out = {}
    for k, v in model.state_dict().items():
        name, _, part = k.rpartition(".")
        if name.startswith("blocks.blocks."):
            i, rest = name[len("blocks.blocks."):].split(".", 1)
            out[f"model.layers.{i}.{inv_layer[rest]}.{part}"] = v
        elif k == "lm_head.weight":
            out[k] = v
        else:
            out[f"model.{inv_top[name]}.{part}"] = v
    hf = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(out, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"Llama export bug: missing {missing}, unexpected {unexpected}")
    for key, value in hf_generation_settings(c.sampling).items():  # transformers' generate samples as zoo's
        setattr(hf.generation_config, key, value)
    hf.save_pretrained(str(out_dir))
