"""HF CLIPModel -> zoo.models.clip.CLIP.

HF's vision `last_hidden_state` is taken before `post_layernorm` (applied to the pooled token
only); the zoo applies ln_post to every token, so the class token, the image embeddings and the
logits agree, while the other image tokens of forward_features differ by that LayerNorm.
"""
from __future__ import annotations

import torch

from ..models.clip import CLIP, CLIPConfig
from ._common import load_into, mlp_ratio_for, zoo_activation


def tower_fields(t, v, family: str) -> dict:
    """CLIPConfig fields of both towers from a transformers text_config / vision_config (CLIP and SigLIP)."""
    if t.hidden_act != v.hidden_act or t.layer_norm_eps != v.layer_norm_eps:
        raise ValueError(f"zoo {family} uses one activation and one LayerNorm eps for both towers; this config differs "
                         f"(text {t.hidden_act}/{t.layer_norm_eps}, vision {v.hidden_act}/{v.layer_norm_eps})")
    return {
        "img_size": v.image_size, "patch_size": v.patch_size, "in_chans": v.num_channels,
        "vision_width": v.hidden_size, "vision_layers": v.num_hidden_layers, "vision_heads": v.num_attention_heads,
        "vision_mlp_ratio": mlp_ratio_for(v.hidden_size, v.intermediate_size), "vocab_size": t.vocab_size,
        "context_length": t.max_position_embeddings, "text_width": t.hidden_size, "text_layers": t.num_hidden_layers,
        "text_heads": t.num_attention_heads, "text_mlp_ratio": mlp_ratio_for(t.hidden_size, t.intermediate_size),
        "pad_token_id": t.pad_token_id if t.pad_token_id is not None else 0,
        "activation": zoo_activation(t.hidden_act, f"{family} hidden_act"), "norm_eps": t.layer_norm_eps,
    }


def zoo_config(hf) -> CLIPConfig:
    eos = hf.text_config.eos_token_id
    return CLIPConfig(
        **tower_fields(hf.text_config, hf.vision_config, "CLIP"), embed_dim=hf.projection_dim,
        eos_token_id=None if eos in (None, 2) else eos,  # HF's legacy configs (eos 2) pool at the argmax id
        logit_scale_init=hf.logit_scale_init_value,
        max_logit_scale=None,  # CLIPModel multiplies by exp(logit_scale) unclamped (OpenAI's stored 4.6052 > ln 100)
    )


def _layers(sd, hf_prefix: str, zoo_prefix: str, depth: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        h, z = f"{hf_prefix}.encoder.layers.{i}.", f"{zoo_prefix}.blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{z}attn.qkv.{p}"] = torch.cat([sd[f"{h}self_attn.{n}_proj.{p}"] for n in "qkv"])
            for src, dst in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[f"{z}{dst}.{p}"] = sd[f"{h}{src}.{p}"]
    return out


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None) -> CLIP:
    if arch not in (None, "CLIPModel"):
        raise ValueError(f"zoo converts CLIPModel, not {arch}")
    cfg = zoo_config(hf)
    model = CLIP(cfg)
    vis, txt = "vision_model.", "text_model."
    out = {
        "logit_scale": sd["logit_scale"],
        "visual.cls_token": sd[vis + "embeddings.class_embedding"].reshape(1, 1, -1),
        "visual.pos_embed": sd[vis + "embeddings.position_embedding.weight"][None],
        "visual.patch_embed.proj.weight": sd[vis + "embeddings.patch_embedding.weight"].flatten(1),
        "text.token_embedding.weight": sd[txt + "embeddings.token_embedding.weight"],
        "text.positional_embedding.weight": sd[txt + "embeddings.position_embedding.weight"],
        "visual_projection.weight": sd["visual_projection.weight"],
        "text_projection.weight": sd["text_projection.weight"],
    }
    for p in ("weight", "bias"):
        out[f"visual.norm_pre.{p}"] = sd[f"{vis}pre_layrnorm.{p}"]
        out[f"visual.encoder.norm.{p}"] = sd[f"{vis}post_layernorm.{p}"]
        out[f"text.transformer.norm.{p}"] = sd[f"{txt}final_layer_norm.{p}"]
    out.update(_layers(sd, "vision_model", "visual.encoder", cfg.vision_layers))
    out.update(_layers(sd, "text_model", "text.transformer", cfg.text_layers))
    return load_into(model, out)
