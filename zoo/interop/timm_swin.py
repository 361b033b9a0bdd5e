"""timm SwinTransformer (v1) -> zoo.models.swin.SwinTransformer.

The zoo Swin keeps timm's parameter names (layers.i.downsample / blocks.j.{norm1, attn, norm2, mlp}),
so the conversion is the patch-embedding convolution as a Linear over (c, p1, p2) and `head.fc` -> `head`.
Every hyper-parameter is read off the timm module; options the zoo Swin lacks are refused by name.
"""
from __future__ import annotations

from torch import nn

from ..models.swin import SwinConfig, SwinTransformer
from ._common import load_into, mlp_ratio_for


def _window(m) -> int:
    windows = getattr(m, "_ref_window_sizes", None) or tuple(stage.blocks[0].attn.window_size for stage in m.layers)
    if len(set(windows)) != 1 or windows[0][0] != windows[0][1]:
        raise ValueError(f"timm Swin windows {windows}: the zoo Swin uses one square window for every stage")
    return windows[0][0]


def zoo_config(m) -> SwinConfig:
    problems = []
    if m.global_pool != "avg":
        problems.append(f"global_pool={m.global_pool!r} (zoo averages)")
    dims = [stage.blocks[0].attn.qkv.in_features if len(stage.blocks) else None for stage in m.layers]
    blocks = [stage.blocks[0] for stage in m.layers if len(stage.blocks)]
    if len(blocks) != len(m.layers):
        problems.append("a stage without blocks")
    for i, b in enumerate(blocks):
        if b.always_partition:
            problems.append("always_partition=True")
        if b.attn.qkv.out_features != 3 * dims[i]:
            problems.append(f"stage {i} head_dim {b.attn.qkv.out_features // (3 * b.attn.num_heads)} != width / heads")
        if not isinstance(b.mlp.act, nn.GELU) or b.mlp.act.approximate != "none":
            problems.append(f"MLP activation {b.mlp.act} (zoo Swin uses exact GELU)")
        if dims[i] != m.embed_dim * 2 ** i:
            problems.append(f"stage {i} width {dims[i]} != embed_dim * 2**{i}")
    ratios = {mlp_ratio_for(d, b.mlp.fc1.out_features) for d, b in zip(dims, blocks)}
    if len(ratios) > 1:
        problems.append(f"per-stage mlp ratios {sorted(ratios)}")
    if problems:
        raise ValueError(f"timm model {type(m).__name__} uses options the zoo Swin lacks: {'; '.join(sorted(set(problems)))}")
    img = tuple(m.patch_embed.img_size)
    patch = m.patch_embed.patch_size
    if patch[0] != patch[1]:
        raise ValueError(f"zoo Swin needs square patches; timm has patch_size={patch}")
    return SwinConfig(
        img_size=img[0] if img[0] == img[1] else img, patch_size=patch[0], in_chans=m.in_chans, num_classes=m.num_classes,
        embed_dim=m.embed_dim, depths=tuple(len(s.blocks) for s in m.layers),
        num_heads=tuple(b.attn.num_heads for b in blocks), window_size=_window(m), mlp_ratio=ratios.pop(),
        qkv_bias=blocks[0].attn.qkv.bias is not None, norm_eps=m.norm.eps,
    )


def convert_timm_swin(m) -> SwinTransformer:
    """The zoo Swin with the weights of a timm SwinTransformer, in eval mode."""
    model = SwinTransformer(zoo_config(m))
    out = {}
    for k, v in m.state_dict().items():
        if k == "patch_embed.proj.weight":
            v = v.flatten(1)  # conv (D, C, p, p) == Linear over patches flattened as (c p1 p2)
        out[k.replace("head.fc.", "head.", 1) if k.startswith("head.fc.") else k] = v
    return load_into(model, out)
