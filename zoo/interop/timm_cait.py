"""timm Cait -> zoo.models.cait.CaiT.

Reads every hyper-parameter off the timm module (sizes, eps, activation, pooling, both MLP ratios) and
refuses what the zoo CaiT lacks (global_pool='', pruned class attention, other block / attention
classes) with a message naming it. Keys map one to one except:
  patch_embed.proj.weight (D, C, p, p) conv  -> flattened (D, C·p·p) Linear (same c, p1, p2 order)
  blocks.i.*                                 -> encoder.blocks.i.*
  blocks_token_only.j.*                      -> class_blocks.j.*
  *.gamma_1 / *.gamma_2                      -> *.ls1.gamma / *.ls2.gamma
"""
from __future__ import annotations

from torch import nn

from ..models.cait import CaiT, CaiTConfig
from ._common import load_into, mlp_ratio_for
from .timm import _activation


def _check_supported(m) -> None:
    problems = []
    if m.global_pool not in ("token", "avg"):
        problems.append(f"global_pool={m.global_pool!r} (zoo supports 'token' and 'avg')")
    if getattr(m, "blocks_token_only", None) is None or m.cls_token is None:
        problems.append("no class-attention blocks (pruned by prune_intermediate_layers)")
    if not isinstance(getattr(m.patch_embed, "norm", None), (nn.Identity, type(None))):
        problems.append("a norm inside patch_embed")
    names = {type(b).__name__ for b in m.blocks} | {type(b.attn).__name__ for b in m.blocks}
    names |= {type(b).__name__ for b in m.blocks_token_only or []} | {type(b.attn).__name__ for b in m.blocks_token_only or []}
    unknown = names - {"LayerScaleBlock", "TalkingHeadAttn", "LayerScaleBlockClassAttn", "ClassAttn"}
    if unknown:
        problems.append(f"block / attention classes {sorted(unknown)}")
    if not all(type(b.mlp).__name__ == "Mlp" for b in list(m.blocks) + list(m.blocks_token_only or [])):
        problems.append("an MLP other than timm's plain Mlp")
    if not all(isinstance(n, nn.LayerNorm) for n in (m.norm, m.blocks[0].norm1)):
        problems.append("norms other than LayerNorm")
    if problems:
        raise ValueError(f"timm model {type(m).__name__} uses options the zoo CaiT lacks: {'; '.join(problems)}")


def zoo_config(m) -> CaiTConfig:
    _check_supported(m)
    img, patch = m.patch_embed.img_size, m.patch_embed.patch_size
    if img[0] != img[1] or patch[0] != patch[1]:
        raise ValueError(f"zoo CaiT needs square images and patches; timm has img_size={img}, patch_size={patch}")
    blk, cls_blk = m.blocks[0], m.blocks_token_only[0]
    dim = m.embed_dim
    return CaiTConfig(
        img_size=img[0], patch_size=patch[0], in_chans=m.patch_embed.proj.in_channels, num_classes=m.num_classes,
        dim=dim, depth=len(m.blocks), num_heads=blk.attn.num_heads, mlp_ratio=mlp_ratio_for(dim, blk.mlp.fc1.out_features),
        qkv_bias=blk.attn.qkv.bias is not None, class_depth=len(m.blocks_token_only),
        class_mlp_ratio=mlp_ratio_for(dim, cls_blk.mlp.fc1.out_features), pool=m.global_pool, norm_eps=blk.norm1.eps,
        activation=_activation(blk.mlp.act),
    )


def _rename(key: str) -> str:
    for src, dst in (("blocks_token_only.", "class_blocks."), ("blocks.", "encoder.blocks.")):
        if key.startswith(src):
            key = dst + key[len(src):]
            break
    return key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")


def convert_timm_cait(m) -> CaiT:
    """The zoo CaiT equal to the timm `Cait` model `m` (eval mode)."""
    cfg = zoo_config(m)
    model = CaiT(cfg)
    sd = {_rename(k): v for k, v in m.state_dict().items()}
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].flatten(1)
    return load_into(model, sd)
