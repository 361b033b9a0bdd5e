"""HF GPT-2 (GPT2LMHeadModel, GPT2Model) <-> zoo.models.gpt.GPT.

transformers keeps GPT-2's projections in `Conv1D` modules whose weight is stored (in, out), the
transpose of nn.Linear's; c_attn's output columns are q | k | v, heads outermost within each, which
is the layout of zoo's fused `qkv`. The head is tied to `wte` (no bias). GPT2Model maps to the same
model (its `forward_features` is the last_hidden_state). Legacy checkpoints without the
`transformer.` prefix and with the old causal-mask buffers (`attn.bias`, `attn.masked_bias`) load.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.gpt import GPT, GPTConfig
from ._common import (first_id, generation_ids, hf_activation, hf_generation_settings, hf_sampling, load_into, strip_prefix,
                      zoo_activation)

# HF suffix in one block -> (zoo suffix, transposed Conv1D)
_LAYER = {
    "ln_1": ("norm1", False), "attn.c_attn": ("attn.qkv", True), "attn.c_proj": ("attn.proj", True),
    "ln_2": ("norm2", False), "mlp.c_fc": ("mlp.fc1", True), "mlp.c_proj": ("mlp.fc2", True),
}
_TOP = {"wte": "wte", "wpe": "wpe", "ln_f": "blocks.norm"}
_IGNORED = ("attn.bias", "attn.masked_bias")  # causal-mask buffers of old checkpoints (transformers drops them)


def zoo_config(hf, generation_config=None) -> GPTConfig:
    if not getattr(hf, "scale_attn_weights", True):
        raise ValueError("zoo GPT scales attention scores by head_dim^-0.5; this config has scale_attn_weights=False")
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("zoo GPT has no per-layer score scaling; this config has scale_attn_by_inverse_layer_idx=True")
    if getattr(hf, "add_cross_attention", False):
        raise ValueError("zoo GPT is decoder-only; this config has add_cross_attention=True")
    eos, pad = generation_ids(hf, generation_config)
    pad = pad if pad is not None else (first_id(eos) if eos is not None else 0)  # generate pads with EOS
    return GPTConfig(
        vocab_size=hf.vocab_size, max_positions=hf.n_positions, dim=hf.n_embd, depth=hf.n_layer, num_heads=hf.n_head,
        mlp_hidden=hf.n_inner, activation=zoo_activation(hf.activation_function, "GPT-2 activation_function"),
        norm_eps=hf.layer_norm_epsilon, dropout=hf.resid_pdrop, attn_dropout=hf.attn_pdrop,
        tie_word_embeddings=True, init_std=hf.initializer_range,
        bos_token_id=hf.bos_token_id if hf.bos_token_id is not None else 0, eos_token_id=eos, pad_token_id=pad,
        sampling=hf_sampling(generation_config),
    )


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None, generation_config=None) -> GPT:
    if arch not in (None, "GPT2LMHeadModel", "GPT2Model"):
        raise ValueError(f"no zoo GPT for {arch}; supported: GPT2LMHeadModel, GPT2Model")
    if not getattr(hf, "tie_word_embeddings", True):
        raise ValueError("zoo GPT ties its output layer to wte (as GPT-2 does); this config has tie_word_embeddings=False")
    model = GPT(zoo_config(hf, generation_config))
    out, unused = {}, []
    for k, v in strip_prefix(sd, "transformer.").items():
        name, _, part = k.rpartition(".")
        if name.startswith("h."):
            i, rest = name[2:].split(".", 1)
            if rest in _LAYER:
                zoo_name, conv = _LAYER[rest]
                out[f"blocks.blocks.{i}.{zoo_name}.{part}"] = v.t() if conv and part == "weight" else v
                continue
            if k.endswith(_IGNORED):
                continue
        elif name in _TOP:
            out[f"{_TOP[name]}.{part}"] = v
            continue
        elif k == "lm_head.weight":
            continue  # an alias of wte (tied)
        unused.append(k)
    if unused:
        raise ValueError(f"HF GPT-2 weights with no zoo equivalent: {', '.join(sorted(unused)[:10])}")
    out["lm_head.weight"] = out["wte.weight"]
    return load_into(model, out)


def to_hf(model: GPT, out_dir: Path) -> None:
    import transformers

    c = model.config
    if not c.tie_word_embeddings:
        raise ValueError("GPT2LMHeadModel ties lm_head to wte; this zoo GPT has tie_word_embeddings=False")
    hf_cfg = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_positions, n_embd=c.dim, n_layer=c.depth, n_head=c.num_heads,
        n_inner=c.mlp_hidden, activation_function=hf_activation(c.activation), resid_pdrop=c.dropout, embd_pdrop=c.dropout,
        attn_pdrop=c.attn_dropout, layer_norm_epsilon=c.norm_eps, initializer_range=c.init_std,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    inv_layer = {z: (h, conv) for h, (z, conv) in _LAYER.items()}
    inv_top = {z: h for h, z in _TOP.items()}
    out = {}
    for k, v in model.state_dict().items():
        name, _, part = k.rpartition(".")
        if name.startswith("blocks.blocks."):
            i, rest = name[len("blocks.blocks."):].split(".", 1)
            hf_name, conv = inv_layer[rest]
            out[f"transformer.h.{i}.{hf_name}.{part}"] = (v.t() if conv and part == "weight" else v).contiguous()
        elif k == "lm_head.weight":
            out[k] = v
        else:
            out[f"transformer.{inv_top[name]}.{part}"] = v
    hf = transformers.GPT2LMHeadModel(hf_cfg)
    missing, unexpected = hf.load_state_dict(out, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 export bug: missing {missing}, unexpected {unexpected}")
    for key, value in hf_generation_settings(c.sampling).items():  # transformers' generate samples as zoo's
        setattr(hf.generation_config, key, value)
    hf.save_pretrained(str(out_dir))
