"""timm Eva (EVA-02, RoPE-ViT) -> zoo.models.eva.Eva.

Reads the hyper-parameters off the timm module (sizes, biases, MLP kind, rotary settings, pooling,
LayerScale, qk-norm, the MLP sub-norm of EVA-02 base/large) and refuses, naming them, the options
zoo's Eva lacks: register tokens, post-norm blocks, the attention inner norm (scale_attn_inner),
gated attention, grouped-query heads, mixed / DINOv3 / M-RoPE tables, half-rotation layout,
pixel-based or offset rotary grids, coordinate augmentation, dynamic image sizes, attention pooling.

Weights: the packed SwiGLU `fc1` [2F, D] splits into zoo's `fc1` (first half, through SiLU) and `gate`
(second half), the separate one's `fc1_g` / `fc1_x` are zoo's `fc1` / `gate`; `q_bias` / `v_bias` go to
the key-bias-free projection; `gamma_1/2` to `ls1/ls2.gamma`.
"""
from __future__ import annotations

from torch import nn

from ..models.eva import Eva, EvaConfig
from ._common import load_into, mlp_ratio_for
from .timm import _activation, _is_identity


def _unsupported(m) -> list[str]:
    problems = []
    if getattr(m, "reg_token", None) is not None:
        problems.append(f"register tokens (num_reg_tokens={m.reg_token.shape[1]})")
    if getattr(m, "no_embed_class", False) and m.pos_embed is not None:
        problems.append("no_embed_class=True")
    if getattr(m, "dynamic_img_size", False):
        problems.append("dynamic_img_size=True")
    if getattr(m.patch_embed, "dynamic_img_pad", False):
        problems.append("dynamic_img_pad=True")
    if getattr(m, "patch_drop", None) is not None:
        problems.append("patch_drop_rate > 0")
    if m.global_pool not in ("avg", "token"):
        problems.append(f"global_pool={m.global_pool!r} (zoo's Eva pools 'avg' or 'token')")
    if not _is_identity(m.norm_pre):
        problems.append("use_pre_transformer_norm=True")
    if not _is_identity(getattr(m.patch_embed, "norm", None)):
        problems.append("a norm inside patch_embed")
    if not _is_identity(m.fc_norm) and not _is_identity(m.norm):
        problems.append("both a final norm and fc_norm")
    if getattr(m, "rope_mixed", False):
        problems.append("rope_type='mixed' (learned per-block frequencies)")
    rope = m.rope
    if rope is not None:
        if type(rope).__name__ != "RotaryEmbeddingCat":
            problems.append(f"rotary embedding {type(rope).__name__} (zoo converts rope_type='cat')")
        else:
            if rope.rotate_half:
                problems.append("rope_rotate_half=True (half-rotation layout)")
            if rope.grid_type != "index" or rope.in_pixels:
                problems.append(f"rotary grid_type={rope.grid_type!r} (zoo uses integer patch indices)")
            if rope.grid_offset:
                problems.append(f"rope_grid_offset={rope.grid_offset}")
            if getattr(rope, "aug_active", False):
                problems.append("rotary coordinate augmentation (shift/jitter/rescale_coords)")
    blk = m.blocks[0]
    if type(blk).__name__ != "EvaBlock":
        problems.append(f"block type {type(blk).__name__} (use_post_norm)")
    attn = blk.attn
    if type(attn).__name__ not in ("EvaAttention", "AttentionRope"):
        problems.append(f"attention type {type(attn).__name__}")
    if getattr(attn, "gate", None) is not None:
        problems.append("gated attention")
    q_norm = getattr(attn, "q_norm", None)
    if not _is_identity(q_norm) and not (isinstance(q_norm, nn.LayerNorm) and q_norm.eps == blk.norm1.eps):
        problems.append(f"attn.q_norm {q_norm} (zoo's qk_norm is a LayerNorm with the blocks' eps {blk.norm1.eps})")
    if not _is_identity(getattr(attn, "norm", None)):
        problems.append("scale_attn_inner=True (attn.norm)")
    if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
        problems.append(f"grouped-query attention (num_kv_heads={attn.num_kv_heads})")
    if attn.head_dim * attn.num_heads != m.embed_dim:
        problems.append(f"attn_head_dim={attn.head_dim} (zoo uses dim // num_heads)")
    mlp_norm = getattr(blk.mlp, "norm", None)
    if not _is_identity(mlp_norm) and not (isinstance(mlp_norm, nn.LayerNorm) and mlp_norm.eps == blk.norm1.eps):
        problems.append(f"mlp.norm {mlp_norm} (zoo's mlp_norm is a LayerNorm with the blocks' eps)")
    if type(blk.mlp).__name__ not in ("GluMlp", "Mlp", "SwiGLU"):
        problems.append(f"MLP type {type(blk.mlp).__name__}")
    elif type(blk.mlp).__name__ == "SwiGLU" and not isinstance(blk.mlp.act, nn.SiLU):
        problems.append(f"a SwiGLU MLP with activation {type(blk.mlp.act).__name__}")
    elif type(blk.mlp).__name__ == "GluMlp" and (blk.mlp.gate_last or not isinstance(blk.mlp.act, nn.SiLU)):
        problems.append("a GLU MLP other than SiLU(first half) * second half")
    if blk.gamma_1 is not None and blk.gamma_2 is None:
        problems.append("attn_only_layer_scale=True")
    return problems


def zoo_config(m) -> EvaConfig:
    problems = _unsupported(m)
    if problems:
        raise ValueError(f"timm {type(m).__name__} uses options zoo's Eva lacks: {'; '.join(problems)}")
    pe, blk, attn = m.patch_embed, m.blocks[0], m.blocks[0].attn
    if pe.patch_size[0] != pe.patch_size[1]:
        raise ValueError(f"zoo's Eva needs square patches; timm has patch_size={pe.patch_size}")
    glu = type(blk.mlp).__name__ in ("GluMlp", "SwiGLU")
    hidden = blk.mlp.fc2.in_features
    fused = attn.qkv is not None
    if type(attn).__name__ == "EvaAttention":
        key_bias = False
        qkv_bias = (attn.q_bias is not None) if fused else attn.q_proj.bias is not None
    else:
        key_bias = qkv_bias = (attn.qkv.bias if fused else attn.q_proj.bias) is not None
    rope = m.rope
    img = tuple(pe.img_size)
    use_fc_norm = not _is_identity(m.fc_norm)
    return EvaConfig(
        img_size=img[0] if img[0] == img[1] else img, patch_size=pe.patch_size[0], in_chans=pe.proj.in_channels,
        num_classes=m.num_classes, dim=m.embed_dim, depth=len(m.blocks), num_heads=attn.num_heads,
        mlp_ratio=mlp_ratio_for(m.embed_dim, hidden), swiglu=glu, activation="gelu" if glu else _activation(blk.mlp.act),
        mlp_norm=not _is_identity(getattr(blk.mlp, "norm", None)), qkv_bias=qkv_bias, key_bias=key_bias, fused_qkv=fused,
        qk_norm=not _is_identity(getattr(attn, "q_norm", None)), class_token=m.cls_token is not None,
        abs_pos=m.pos_embed is not None, rope=rope is not None,
        rope_temperature=float(rope.temperature) if rope is not None else 10000.0,
        rope_indexing=rope.grid_indexing if rope is not None else "ij",
        rope_ref_grid=tuple(rope.ref_feat_shape) if rope is not None and rope.ref_feat_shape is not None else None,
        layer_scale=float(blk.init_values) if blk.gamma_1 is not None else None,
        pool=m.global_pool, fc_norm=None if use_fc_norm == (m.global_pool == "avg") else use_fc_norm,
        norm_eps=blk.norm1.eps,
    )


def convert_timm_eva(m) -> Eva:
    """The zoo Eva equal to timm Eva `m` (same outputs), built from its configuration and weights."""
    cfg = zoo_config(m)
    model = Eva(cfg)
    sd = m.state_dict()
    out = {"patch_embed.proj.weight": sd["patch_embed.proj.weight"].flatten(1),
           "patch_embed.proj.bias": sd["patch_embed.proj.bias"]}
    for key in ("cls_token", "pos_embed"):
        if key in sd:
            out[key] = sd[key]
    for src, dst in (("norm", "encoder.norm"), ("fc_norm", "fc_norm"), ("head", "head")):
        for part in ("weight", "bias"):
            if f"{src}.{part}" in sd:
                out[f"{dst}.{part}"] = sd[f"{src}.{part}"]
    renames = {"gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma", "attn.q_proj.": "attn.q.", "attn.k_proj.": "attn.k.",
               "attn.v_proj.": "attn.v.", "attn.q_bias": "attn.qkv.q_bias", "attn.v_bias": "attn.qkv.v_bias",
               "mlp.fc1_g.": "mlp.fc1.", "mlp.fc1_x.": "mlp.gate."}  # separate SwiGLU: gate (SiLU) -> fc1, x -> gate
    for i in range(cfg.depth):
        a, z = f"blocks.{i}.", f"encoder.blocks.{i}."
        for k, v in sd.items():
            if not k.startswith(a):
                continue
            name = k[len(a):]
            if cfg.swiglu and name.startswith("mlp.fc1."):  # packed GluMlp: [gate rows (SiLU); value rows]
                first, second = v.chunk(2, dim=0)
                part = name.rsplit(".", 1)[1]
                out[z + f"mlp.fc1.{part}"], out[z + f"mlp.gate.{part}"] = first, second
                continue
            for old, new in renames.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            out[z + name] = v
    return load_into(model, out)
