"""HF ViTMAEForPreTraining -> zoo.models.mae.MaskedAutoencoder (parity_facts_variants §5).

Three spellings of the layer weights are accepted: in memory (`vit.layers.i.attention.q_proj`,
`decoder.decoder_layers.i...`), the hub's (`vit.encoder.layer.i.attention.attention.query`, `attention.output.dense`,
`intermediate.dense`, `output.dense`) and what `save_pretrained` writes for the decoder (`decoder.decoder_encoder.layer.i`).
Both sin-cos tables are copied from the weights: a freshly built HF model has them all zero.
"""
from __future__ import annotations

import re

import torch

from ..models.mae import MAEConfig, MaskedAutoencoder
from . import hf_vit
from ._common import load_into, mlp_ratio_for

# any spelling -> in-memory v5 name, applied in order (the stack prefix first, then the inside of a layer)
_RENAMES = [
    (r"^vit\.encoder\.layer\.(\d+)\.", r"vit.layers.\1."),
    (r"^decoder\.decoder_encoder\.layer\.(\d+)\.", r"decoder.decoder_layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"(layers\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]
# zoo block part -> HF layer part (qkv is the concatenation of q_proj, k_proj, v_proj)
_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
          "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
# zoo name -> HF name of the weights outside the layer stacks
_FIXED = {
    "cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "encoder.norm.weight": "vit.layernorm.weight", "encoder.norm.bias": "vit.layernorm.bias",
    "decoder_embed.weight": "decoder.decoder_embed.weight", "decoder_embed.bias": "decoder.decoder_embed.bias",
    "mask_token": "decoder.mask_token", "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder.norm.weight": "decoder.decoder_norm.weight", "decoder.norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight", "decoder_pred.bias": "decoder.decoder_pred.bias",
}


def _canonical(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, rep in _RENAMES:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def zoo_config(hf) -> MAEConfig:
    vit = hf_vit.zoo_config(hf)  # the encoder reads like an HF ViT's config
    return MAEConfig(
        img_size=vit.img_size, patch_size=vit.patch_size, in_chans=vit.in_chans, dim=vit.dim, depth=vit.depth,
        num_heads=vit.num_heads, mlp_ratio=vit.mlp_ratio, qkv_bias=vit.qkv_bias, norm_eps=vit.norm_eps,
        activation=vit.activation, decoder_dim=hf.decoder_hidden_size, decoder_depth=hf.decoder_num_hidden_layers,
        decoder_num_heads=hf.decoder_num_attention_heads,
        decoder_mlp_ratio=mlp_ratio_for(hf.decoder_hidden_size, hf.decoder_intermediate_size),
        mask_ratio=hf.mask_ratio, norm_pix_loss=hf.norm_pix_loss,
    )


def _stack(sd: dict, src: str, dst: str, depth: int, qkv_bias: bool) -> dict[str, torch.Tensor]:
    """HF layers `src{i}.` -> zoo blocks `dst{i}.`."""
    out = {}
    for i in range(depth):
        a, z = f"{src}{i}.", f"{dst}{i}."
        for part in ("weight", "bias"):
            if part == "weight" or qkv_bias:
                out[f"{z}attn.qkv.{part}"] = torch.cat([sd[f"{a}attention.{n}_proj.{part}"] for n in "qkv"])
            for ours, theirs in _BLOCK.items():
                out[f"{z}{ours}.{part}"] = sd[f"{a}{theirs}.{part}"]
    return out


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None) -> MaskedAutoencoder:
    if arch is not None and arch != "ViTMAEForPreTraining":
        raise ValueError(f"zoo converts ViTMAEForPreTraining (encoder and decoder); got {arch}. For the encoder alone "
                         "convert the pre-training model and load its encoder into a ViT with init_from")
    sd = _canonical(sd)
    cfg = zoo_config(hf)
    model = MaskedAutoencoder(cfg)
    out = {ours: sd[theirs] for ours, theirs in _FIXED.items()}
    out["patch_embed.proj.weight"] = out["patch_embed.proj.weight"].flatten(1)  # conv (D, C, p, p) == Linear on (c p1 p2)
    out.update(_stack(sd, "vit.layers.", "encoder.blocks.", cfg.depth, cfg.qkv_bias))
    out.update(_stack(sd, "decoder.decoder_layers.", "decoder.blocks.", cfg.decoder_depth, cfg.qkv_bias))
    leftover = sorted(k for k in sd if k not in _FIXED.values() and not re.match(r"(vit\.layers|decoder\.decoder_layers)\.\d+\.", k))
    if leftover:
        raise ValueError(f"unexpected HF ViTMAE weights with no zoo equivalent: {', '.join(leftover[:10])}")
    return load_into(model, out)
