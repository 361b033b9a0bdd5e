"""HF SiglipModel -> zoo.models.clip.CLIP with SigLIP's switches (vision_pool='map', text_pool='last', logit bias).

    vision  patch conv (with bias) + position table (no class token) -> pre-LN layers -> post_layernorm on
            every token -> MAP head: probe, nn.MultiheadAttention (in_proj rows [W_q; W_k; W_v]), out_proj,
            h + MLP(layernorm(h)) -> the image embedding (no projection)
    text    token + position embeddings -> bidirectional layers -> final_layer_norm -> the LAST position
            -> head (Linear with bias) -> the text embedding
    logits  exp(logit_scale) * <img, txt> + logit_bias; HF keeps both as shape-[1] Parameters and does not clamp
"""
from __future__ import annotations

import torch

from ..models.clip import CLIP, CLIPConfig
from ._common import load_into
from .hf_clip import _layers, tower_fields


def zoo_config(hf) -> CLIPConfig:
    t, v = hf.text_config, hf.vision_config
    if not getattr(v, "vision_use_head", True):
        raise ValueError("vision_config.vision_use_head=False (no attention-pooling head) has no image embedding; "
                         "zoo converts SiglipModel with its head")
    if t.projection_size != v.hidden_size:
        raise ValueError(f"text projection_size ({t.projection_size}) differs from the vision hidden_size ({v.hidden_size}); "
                         "SigLIP compares the text head's output with the pooled image vector, so they must be equal")
    return CLIPConfig(**tower_fields(t, v, "SigLIP"), embed_dim=t.projection_size, vision_pool="map", text_pool="last",
                      logit_bias_init=-10.0, max_logit_scale=None)


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None) -> CLIP:
    if arch not in (None, "SiglipModel"):
        raise ValueError(f"zoo converts SiglipModel (both towers), not {arch}")
    cfg = zoo_config(hf)
    model = CLIP(cfg)
    vis, txt, head = "vision_model.", "text_model.", "vision_model.head."
    d = cfg.vision_width
    in_w, in_b = sd[head + "attention.in_proj_weight"], sd[head + "attention.in_proj_bias"]
    out = {
        "logit_scale": sd["logit_scale"].reshape(()),
        "logit_bias": sd["logit_bias"].reshape(()),
        "visual.pos_embed": sd[vis + "embeddings.position_embedding.weight"][None],
        "visual.patch_embed.proj.weight": sd[vis + "embeddings.patch_embedding.weight"].flatten(1),
        "visual.patch_embed.proj.bias": sd[vis + "embeddings.patch_embedding.bias"],
        "attn_pool.probe": sd[head + "probe"],
        "text.token_embedding.weight": sd[txt + "embeddings.token_embedding.weight"],
        "text.positional_embedding.weight": sd[txt + "embeddings.position_embedding.weight"],
    }
    for i, name in enumerate("qkv"):  # nn.MultiheadAttention stacks the projections as rows [q; k; v]
        out[f"attn_pool.attn.{name}.weight"] = in_w[i * d:(i + 1) * d]
        out[f"attn_pool.attn.{name}.bias"] = in_b[i * d:(i + 1) * d]
    for p in ("weight", "bias"):
        out[f"visual.encoder.norm.{p}"] = sd[f"{vis}post_layernorm.{p}"]
        out[f"text.transformer.norm.{p}"] = sd[f"{txt}final_layer_norm.{p}"]
        out[f"text_projection.{p}"] = sd[f"{txt}head.{p}"]
        out[f"attn_pool.attn.proj.{p}"] = sd[f"{head}attention.out_proj.{p}"]
        out[f"attn_pool.norm.{p}"] = sd[f"{head}layernorm.{p}"]
        out[f"attn_pool.mlp.fc1.{p}"] = sd[f"{head}mlp.fc1.{p}"]
        out[f"attn_pool.mlp.fc2.{p}"] = sd[f"{head}mlp.fc2.{p}"]
    out.update(_layers(sd, "vision_model", "visual.encoder", cfg.vision_layers))
    out.update(_layers(sd, "text_model", "text.transformer", cfg.text_layers))
    return load_into(model, out)
