"""HF ViT (ViTModel, ViTForImageClassification) <-> zoo.models.vit.VisionTransformer.

ViTModel's pooler (dense + tanh on the class token, `pooler_output`) becomes the zoo ViT's `pooler=True`: forward
gives pooler_output, forward_features last_hidden_state (the class token itself: forward_features(x)[:, 0]).

transformers 5.24 names parameters differently in memory (`layers.i.attention.q_proj`) and on
disk (`encoder.layer.i.attention.attention.query`); both are accepted (parity_facts §3).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..models.vit import ViTConfig, VisionTransformer
from ._common import hf_activation, load_into, mlp_ratio_for, strip_prefix, zoo_activation

# on-disk (hub) name -> in-memory v5 name
_HUB_TO_V5 = [
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.", r"layers.\1."),
]


def _v5_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, rep in _HUB_TO_V5:
            k, n = re.subn(pat, rep, k)
            if n:
                break
        out[k] = v
    return out


def zoo_config(hf) -> ViTConfig:
    size = hf.image_size if isinstance(hf.image_size, int) else tuple(hf.image_size)
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ValueError(f"zoo ViT needs square images; this config has image_size={size}")
        size = size[0]
    return ViTConfig(
        img_size=size, patch_size=hf.patch_size, in_chans=hf.num_channels, num_classes=0,
        dim=hf.hidden_size, depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        mlp_ratio=mlp_ratio_for(hf.hidden_size, hf.intermediate_size), qkv_bias=hf.qkv_bias,
        pool="token", fc_norm=None, class_token=True, norm_eps=hf.layer_norm_eps,
        activation=zoo_activation(hf.hidden_act, "ViT hidden_act"),
        drop_rate=hf.hidden_dropout_prob, attn_drop_rate=hf.attention_probs_dropout_prob,
    )


def from_hf(hf, sd: dict[str, torch.Tensor], arch: str | None) -> VisionTransformer:
    sd = _v5_names(strip_prefix(sd, "vit."))
    sd.pop("embeddings.mask_token", None)  # masked-image modelling only (use_mask_token=True); unused otherwise
    classify = "classifier.weight" in sd
    if arch == "ViTForImageClassification" and not classify:
        raise ValueError("ViTForImageClassification weights lack classifier.weight")
    cfg = zoo_config(hf)
    cfg.num_classes = sd["classifier.weight"].shape[0] if classify else 0
    cfg.pooler = "pooler.dense.weight" in sd and not classify  # ViTModel's pooler: model(x) = pooler_output
    if cfg.pooler and (getattr(hf, "pooler_act", "tanh") != "tanh"
                       or (getattr(hf, "pooler_output_size", None) or hf.hidden_size) != hf.hidden_size):
        raise ValueError(f"zoo ViT's pooler is dense({hf.hidden_size} -> {hf.hidden_size}) + tanh; this config has "
                         f"pooler_act={hf.pooler_act!r}, pooler_output_size={hf.pooler_output_size}")
    model = VisionTransformer(cfg)
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        # conv (D, C, p, p) == Linear on "(c p1 p2)" patches
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"].flatten(1),
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": sd["layernorm.weight"],
        "encoder.norm.bias": sd["layernorm.bias"],
    }
    if classify:
        out["head.weight"], out["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
    if cfg.pooler:
        out["pooler.0.weight"], out["pooler.0.bias"] = sd["pooler.dense.weight"], sd["pooler.dense.bias"]
    for i in range(cfg.depth):
        a, z = f"layers.{i}.", f"encoder.blocks.{i}."
        for part in ("weight", "bias"):
            if part == "weight" or cfg.qkv_bias:
                out[z + f"attn.qkv.{part}"] = torch.cat([sd[a + f"attention.{n}_proj.{part}"] for n in "qkv"])
            out[z + f"attn.proj.{part}"] = sd[a + f"attention.o_proj.{part}"]
            out[z + f"norm1.{part}"] = sd[a + f"layernorm_before.{part}"]
            out[z + f"norm2.{part}"] = sd[a + f"layernorm_after.{part}"]
            out[z + f"mlp.fc1.{part}"] = sd[a + f"mlp.fc1.{part}"]
            out[z + f"mlp.fc2.{part}"] = sd[a + f"mlp.fc2.{part}"]
    used = {"embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight",
            "embeddings.patch_embeddings.projection.bias", "layernorm.weight", "layernorm.bias",
            "classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"}
    leftover = sorted(k for k in sd if k not in used and not k.startswith("layers."))
    if leftover:
        raise ValueError(f"unexpected HF ViT weights with no zoo equivalent: {', '.join(leftover[:10])}")
    return load_into(model, out)  # forward_features = last_hidden_state; ViTModel with a pooler: forward = pooler_output


def to_hf(model: VisionTransformer, out_dir: Path) -> None:
    import transformers

    c = model.config
    fc_norm = c.pool == "avg" if c.fc_norm is None else c.fc_norm
    if c.pool != "token" or fc_norm or not c.class_token or c.stem != "patch" or c.pre_norm:
        raise ValueError(
            "transformers' ViT has class-token pooling with the final norm before it and a linear patch embedding; "
            f"this model has pool={c.pool!r}, fc_norm={fc_norm}, class_token={c.class_token}, stem={c.stem!r}, "
            f"pre_norm={c.pre_norm}. Use a token-pool ViT (e.g. vit_small_patch16_224) to export"
        )
    lacking = {k: v for k, v in (("reg_tokens", c.reg_tokens), ("no_embed_class", c.no_embed_class), ("qk_norm", c.qk_norm),
                                 ("layer_scale", c.layer_scale)) if v}
    lacking.update({k: v for k, v, default in (("pos_embed", c.pos_embed, "learn"), ("norm", c.norm, "layernorm"),
                                               ("norm_first", c.norm_first, True), ("mlp", c.mlp, "mlp")) if v != default})
    if lacking:  # DeiT III, register and QK-norm ViTs: transformers' ViT has none of these
        raise ValueError(f"transformers' ViT has no {', '.join(f'{k}={v}' for k, v in lacking.items())}; "
                         "this model cannot be exported to it (use a plain ViT, e.g. vit_small_patch16_224)")
    hidden = model.encoder.blocks[0].mlp.fc1.out_features
    hf_cfg = transformers.ViTConfig(
        hidden_size=c.dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads, intermediate_size=hidden,
        hidden_act=hf_activation(c.activation), layer_norm_eps=c.norm_eps, image_size=c.img_size,
        patch_size=c.patch_size, num_channels=c.in_chans, qkv_bias=c.qkv_bias,
        hidden_dropout_prob=c.drop_rate, attention_probs_dropout_prob=c.attn_drop_rate,
        num_labels=max(model.num_classes, 1),
    )
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    p = c.patch_size
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"].reshape(c.dim, c.in_chans, p, p),
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["encoder.norm.weight"],
        "layernorm.bias": sd["encoder.norm.bias"],
    }
    for i in range(c.depth):
        a, z = f"layers.{i}.", f"encoder.blocks.{i}."
        for part in ("weight", "bias"):
            if part == "weight" or c.qkv_bias:
                for n, t in zip("qkv", sd[z + f"attn.qkv.{part}"].chunk(3)):
                    out[a + f"attention.{n}_proj.{part}"] = t
            out[a + f"attention.o_proj.{part}"] = sd[z + f"attn.proj.{part}"]
            out[a + f"layernorm_before.{part}"] = sd[z + f"norm1.{part}"]
            out[a + f"layernorm_after.{part}"] = sd[z + f"norm2.{part}"]
            out[a + f"mlp.fc1.{part}"] = sd[z + f"mlp.fc1.{part}"]
            out[a + f"mlp.fc2.{part}"] = sd[z + f"mlp.fc2.{part}"]
    if c.pooler and model.num_classes > 0:
        raise ValueError("transformers' ViTForImageClassification has no pooler (its classifier reads the class token); "
                         "this model has pooler=True and a head: export a headless one (num_classes=0) as ViTModel")
    if c.pooler:
        out["pooler.dense.weight"], out["pooler.dense.bias"] = sd["pooler.0.weight"], sd["pooler.0.bias"]
    used = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "encoder.norm.weight",
            "encoder.norm.bias", "head.weight", "head.bias", "pooler.0.weight", "pooler.0.bias"}
    extra = sorted(k for k in sd if k not in used and not k.startswith("encoder.blocks."))
    if extra:  # e.g. a DeiT distillation token: HF ViT has no place for it
        raise ValueError(f"{type(model).__name__} has weights transformers' ViT lacks: {', '.join(extra)}")
    if model.num_classes > 0:
        hf = transformers.ViTForImageClassification(hf_cfg)
        out = {"vit." + k: v for k, v in out.items()}
        out["classifier.weight"], out["classifier.bias"] = sd["head.weight"], sd["head.bias"]
    else:  # without pooler=True, load with ViTModel.from_pretrained(dir, add_pooling_layer=False)
        hf = transformers.ViTModel(hf_cfg, add_pooling_layer=c.pooler)
    hf.load_state_dict(out, strict=True)
    hf.save_pretrained(str(out_dir))
