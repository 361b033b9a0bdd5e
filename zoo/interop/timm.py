"""timm VisionTransformer -> zoo.models.vit.VisionTransformer.

Reads every hyper-parameter off the timm module (eps, activation, pooling, fc_norm, pre-norm,
register tokens, no_embed_class, qk_norm, LayerScale, dynamic_img_size) and refuses the options
the zoo ViT lacks (attention-pool head, patch-embed norm, dynamic padding, other blocks / MLPs, ...)
with a message naming them. DeiT III is a timm VisionTransformer (no_embed_class + LayerScale) and
converts here too; LayerScale becomes the zoo block's `ls1/ls2.gamma`.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..models.vit import ViTConfig, VisionTransformer
from ..weights import StateDictMismatch, load_state_dict_checked
from ._common import load_into, mlp_ratio_for, read_weights


def _activation(act: nn.Module) -> str:
    from ..core.layers import QuickGELU

    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    if type(act).__name__ == "QuickGELU" or isinstance(act, QuickGELU):
        return "quick_gelu"
    try:  # timm's own modules, which act_layer='gelu' / 'gelu_tanh' give (SigLIP GAP ViTs: 'gelu_tanh')
        from timm.layers.activations import GELU, GELUTanh
    except ImportError:
        GELU = GELUTanh = ()
    if isinstance(act, GELUTanh):
        return "gelu_tanh"
    if isinstance(act, GELU):
        return "gelu"
    for cls, name in ((nn.ReLU, "relu"), (nn.SiLU, "silu")):
        if isinstance(act, cls):
            return name
    raise ValueError(f"timm MLP activation {type(act).__name__} has no zoo equivalent")


def _is_identity(m: Any) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _check_supported(m) -> None:
    problems = []
    if getattr(m, "global_pool", "token") not in ("token", "avg"):
        problems.append(f"global_pool={m.global_pool!r} (zoo supports 'token' and 'avg')")
    if getattr(m, "pool_include_prefix", False):
        problems.append("pool_include_prefix=True")
    if getattr(m.patch_embed, "dynamic_img_pad", False):
        problems.append("dynamic_img_pad=True")
    if not _is_identity(getattr(m.patch_embed, "norm", None)):
        problems.append("a norm inside patch_embed")
    if _is_identity(getattr(m, "norm", None)) and _is_identity(getattr(m, "fc_norm", None)):
        problems.append("no final norm (final_norm=False)")
    if type(m.patch_embed).__name__ != "PatchEmbed":  # e.g. HybridEmbed: a ResNet stem before the projection
        problems.append(f"patch embedding {type(m.patch_embed).__name__} (zoo converts timm's PatchEmbed)")
    blk = m.blocks[0]
    # other blocks / attentions lack the attributes read below: name them and stop here
    if type(blk).__name__ != "Block":  # parallel blocks (ParallelScalingBlock, ParallelThingsBlock) have no .attn
        foreign = f"block type {type(blk).__name__} (zoo converts timm's Block)"
    elif type(blk.attn).__name__ != "Attention":  # attn_layer='diff' (DiffAttention: lambdas and a sub-norm)
        foreign = f"attention type {type(blk.attn).__name__} (zoo converts timm's Attention)"
    else:
        foreign = None
    if foreign:
        raise ValueError(f"timm model {type(m).__name__} uses options the zoo ViT lacks: {'; '.join(problems + [foreign])}")
    if not isinstance(blk.norm1, nn.LayerNorm):  # norm_layer='rmsnorm' / 'simplenorm': no bias, another formula
        problems.append(f"norm_layer {type(blk.norm1).__name__} (zoo's ViT uses LayerNorm)")
    if not _is_identity(getattr(blk.attn, "norm", None)):
        problems.append("attn.norm (scale_attn_norm)")
    q_norm = getattr(blk.attn, "q_norm", None)
    if not _is_identity(q_norm) and not (isinstance(q_norm, nn.LayerNorm) and q_norm.eps == blk.norm1.eps):
        problems.append(f"attn.q_norm {q_norm} (zoo's qk_norm is a LayerNorm with the blocks' eps {blk.norm1.eps})")
    if not _is_identity(getattr(blk.mlp, "norm", None)):
        problems.append("mlp.norm (scale_mlp_norm)")
    if blk.attn.proj.bias is None or getattr(blk.mlp, "fc1", None) is not None and blk.mlp.fc1.bias is None:
        problems.append("proj_bias=False (zoo's attention output and MLP layers have biases)")
    if type(blk.mlp).__name__ != "Mlp":
        problems.append(f"MLP type {type(blk.mlp).__name__} (zoo converts the plain Mlp)")
    if problems:
        raise ValueError(f"timm model {type(m).__name__} uses options the zoo ViT lacks: {'; '.join(problems)}")


def zoo_config(m) -> ViTConfig:
    _check_supported(m)
    blk = m.blocks[0]
    img = m.patch_embed.img_size
    patch = m.patch_embed.patch_size
    if img[0] != img[1] or patch[0] != patch[1]:
        raise ValueError(f"zoo ViT needs a square construction size and patches; timm has img_size={img}, patch_size={patch} "
                         "(build it square: non-square inputs then work with dynamic_img_size=True)")
    dim = m.embed_dim
    ls = getattr(blk.ls1, "init_values", None) if hasattr(blk.ls1, "gamma") else None
    return ViTConfig(
        img_size=img[0], patch_size=patch[0], in_chans=m.patch_embed.proj.in_channels, num_classes=m.num_classes,
        dim=dim, depth=len(m.blocks), num_heads=blk.attn.num_heads,
        mlp_ratio=mlp_ratio_for(dim, blk.mlp.fc1.out_features), qkv_bias=blk.attn.qkv.bias is not None,
        # fc_norm None = the default for the pooling (timm's rule), so configs compare equal to registered ones
        pool=m.global_pool, fc_norm=None if _is_identity(m.fc_norm) != (m.global_pool == "avg") else not _is_identity(m.fc_norm),
        class_token=m.cls_token is not None, reg_tokens=m.num_reg_tokens, no_embed_class=m.no_embed_class,
        qk_norm=not _is_identity(getattr(blk.attn, "q_norm", None)), layer_scale=None if ls is None else float(ls),
        norm_eps=blk.norm1.eps, activation=_activation(blk.mlp.act), pre_norm=not _is_identity(m.norm_pre),
        pos_resize_antialias=bool(m.dynamic_img_size),
        pos_embed="learn" if getattr(m, "pos_embed", None) is not None else "none",  # timm pos_embed='none'
    )


def convert_timm_vit(m) -> VisionTransformer:
    """timm VisionTransformer (ViT, DeiT III, DINOv2-reg, ...) -> zoo VisionTransformer with the same outputs."""
    cfg = zoo_config(m)
    model = VisionTransformer(cfg)
    sd = m.state_dict()
    out = {"patch_embed.proj.weight": sd["patch_embed.proj.weight"].flatten(1)}
    for name in ("pos_embed", "patch_embed.proj.bias", "cls_token", "reg_token"):
        if name in sd:
            out[name] = sd[name]
    for src, dst in (("norm_pre", "norm_pre"), ("norm", "encoder.norm"), ("fc_norm", "fc_norm"), ("head", "head")):
        for part in ("weight", "bias"):
            if f"{src}.{part}" in sd:
                out[f"{dst}.{part}"] = sd[f"{src}.{part}"]
    for i in range(cfg.depth):  # block keys are the same names: norm1, attn.{qkv,q_norm,k_norm,proj}, ls1, norm2, mlp, ls2
        a, z = f"blocks.{i}.", f"encoder.blocks.{i}."
        out.update({z + k[len(a):]: v for k, v in sd.items() if k.startswith(a)})
    return load_into(model, out)


# timm model class name -> (zoo.interop module, converter function taking the timm model object).
# A family adds its converter here: one line, one module zoo/interop/timm_<family>.py.
TIMM_CONVERTERS: dict[str, tuple[str, str]] = {
    "VisionTransformer": ("timm", "convert_timm_vit"),
    "Cait": ("timm_cait", "convert_timm_cait"),
    "Eva": ("timm_eva", "convert_timm_eva"),
    "SwinTransformer": ("timm_swin", "convert_timm_swin"),
}


def _converter(m: nn.Module):
    import importlib

    cls = type(m).__name__
    if cls not in TIMM_CONVERTERS:
        raise TypeError(f"from_timm converts timm {', '.join(sorted(TIMM_CONVERTERS))} models, got {cls}")
    module, fn = TIMM_CONVERTERS[cls]
    return getattr(importlib.import_module(f"{__package__}.{module}"), fn)


def from_timm(source: Any, arch: str | None = None, **timm_kwargs) -> nn.Module:
    """The zoo model equivalent to a timm model (a family in TIMM_CONVERTERS), in eval mode.

    `source`: a timm model object, or a local checkpoint (.safetensors, or a weights-only torch
    file) together with `arch`, its timm architecture name; the timm model is then built with
    pretrained=False (nothing is downloaded) to read its configuration, and `timm_kwargs`
    (e.g. img_size, global_pool) are passed to `timm.create_model`.
    """
    if isinstance(source, nn.Module):
        return _converter(source)(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"from_timm expects a timm model or a checkpoint path, got {type(source).__name__}")
    if arch is None:
        raise ValueError("a checkpoint file needs its timm architecture: from_timm(path, arch='vit_small_patch16_224')")
    import timm

    sd = read_weights(source)
    if "num_classes" not in timm_kwargs:
        head = next((sd[k] for k in ("head.weight", "head.fc.weight") if k in sd), None)
        timm_kwargs["num_classes"] = head.shape[0] if head is not None else 0
    if "global_pool" not in timm_kwargs and "fc_norm.weight" in sd and "norm.weight" not in sd:
        timm_kwargs["global_pool"] = "avg"
    m = timm.create_model(arch, pretrained=False, **timm_kwargs)
    convert = _converter(m)
    try:  # names every missing, unexpected and mis-shaped key at once
        load_state_dict_checked(m, sd)
    except StateDictMismatch as e:
        raise StateDictMismatch(f"checkpoint does not fit timm {arch!r} built with {timm_kwargs}: {e}\n"
                                "Check the architecture name; pass img_size= / global_pool= etc. if the run changed them") from None
    return convert(m.eval())
