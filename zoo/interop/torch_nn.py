"""torch.nn.Transformer -> zoo vanilla Transformer; torchvision vit_b_16 family -> zoo ViT.

nn.Transformer holds only the two stacks: it has no embeddings, positional encoding or output
layer, so those stay as the zoo initialises them unless `src_embed` / `tgt_embed` / `generator`
modules are passed. Its final encoder/decoder LayerNorms (present even in post-LN mode,
parity_facts §5) map to the zoo's `final_norm=True`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.transformer import EncoderDecoderTransformer, TransformerConfig
from ..models.vit import ViTConfig, VisionTransformer
from ._common import load_into, mlp_ratio_for


def _act(layer) -> str:
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    raise ValueError(f"nn.Transformer activation {act!r} has no zoo equivalent; use 'relu' or 'gelu'")


def _mha(prefix: str, sd, fused: bool) -> dict[str, torch.Tensor]:
    """torch MultiheadAttention (packed in_proj rows q|k|v) -> zoo MultiHeadAttention keys."""
    w, b = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    if fused:
        out = {"qkv.weight": w, "qkv.bias": b}
    else:
        out = {f"{n}.{p}": t for p, ts in (("weight", w.chunk(3)), ("bias", b.chunk(3))) for n, t in zip("qkv", ts)}
    out.update({"proj.weight": sd[prefix + "out_proj.weight"], "proj.bias": sd[prefix + "out_proj.bias"]})
    return out


def from_torch_transformer(module: nn.Transformer, vocab_size: int = 1000, src_embed: nn.Embedding | None = None,
                           tgt_embed: nn.Embedding | None = None, generator: nn.Linear | None = None,
                           **overrides) -> EncoderDecoderTransformer:
    """The zoo encoder-decoder whose stacks equal `module`'s, in eval mode.

    `vocab_size` sizes the zoo embeddings and output layer (nn.Transformer has none);
    `overrides` go to TransformerConfig (e.g. scale_embedding, max_len, pad_token_id).
    """
    if not isinstance(module, nn.Transformer):
        raise TypeError(f"from_torch_transformer expects torch.nn.Transformer, got {type(module).__name__}")
    enc = module.encoder.layers[0]
    if enc.self_attn.in_proj_bias is None or enc.linear1.bias is None or enc.norm1.bias is None:
        raise ValueError("nn.Transformer(bias=False) has no zoo equivalent: zoo's vanilla transformer uses biases")
    if module.encoder.norm is None or module.decoder.norm is None:
        raise ValueError("zoo expects the final encoder and decoder norms nn.Transformer builds; this one lacks them")
    kw = dict(
        vocab_size=vocab_size, d_model=module.d_model, num_encoder_layers=len(module.encoder.layers),
        num_decoder_layers=len(module.decoder.layers), num_heads=module.nhead,
        dim_feedforward=enc.linear1.out_features, activation=_act(enc), dropout=enc.dropout.p,
        attn_dropout=enc.self_attn.dropout, activation_dropout=enc.dropout.p, norm_first=enc.norm_first,
        final_norm=True, norm_eps=enc.norm1.eps,
        share_embeddings=src_embed is None or tgt_embed is None or src_embed is tgt_embed,
    )
    if not kw["share_embeddings"]:
        kw["src_vocab_size"] = src_embed.num_embeddings
    if generator is not None and generator.weight is not getattr(tgt_embed if tgt_embed is not None else src_embed, "weight", None):
        kw["share_embeddings"], kw["tie_output"] = False, False  # a separate output layer
        kw.setdefault("src_vocab_size", src_embed.num_embeddings if src_embed is not None else vocab_size)
    kw.update(overrides)
    model = EncoderDecoderTransformer(TransformerConfig(**kw))
    sd, out = module.state_dict(), {k: v for k, v in model.state_dict().items()
                                    if k.startswith(("src_embed", "tgt_embed", "lm_head"))}
    for stack in ("encoder", "decoder"):
        for i in range(len(getattr(module, stack).layers)):
            t, z = f"{stack}.layers.{i}.", f"{stack}.blocks.{i}."
            out.update({z + "attn." + k: v for k, v in _mha(t + "self_attn.", sd, fused=True).items()})
            norms = {"norm1": "norm1", "norm2": "norm2"}
            if stack == "decoder":
                out.update({z + "cross_attn." + k: v for k, v in _mha(t + "multihead_attn.", sd, fused=False).items()})
                norms = {"norm1": "norm1", "norm2": "norm_cross", "norm3": "norm2"}
            for src, dst in list(norms.items()) + [("linear1", "mlp.fc1"), ("linear2", "mlp.fc2")]:
                for p in ("weight", "bias"):
                    out[f"{z}{dst}.{p}"] = sd[f"{t}{src}.{p}"]
        for p in ("weight", "bias"):
            out[f"{stack}.norm.{p}"] = sd[f"{stack}.norm.{p}"]
    for name, mod in (("src_embed", src_embed), ("tgt_embed", tgt_embed if tgt_embed is not None else src_embed),
                      ("lm_head", generator)):
        if mod is not None:
            out[f"{name}.weight"] = mod.weight.detach()
    if generator is not None and generator.bias is not None:
        raise ValueError("zoo's output layer has no bias; pass a generator Linear(bias=False)")
    return load_into(model, out)


def from_torchvision_vit(module: nn.Module) -> VisionTransformer:
    """torchvision.models.VisionTransformer (vit_b_16, ...) -> zoo ViT with class-token pooling, eps 1e-6."""
    if type(module).__name__ != "VisionTransformer" or not hasattr(module, "conv_proj"):
        raise TypeError(f"from_torchvision_vit expects a torchvision VisionTransformer, got {type(module).__name__}")
    if "pre_logits" in dict(module.heads.named_children()):
        raise ValueError("torchvision ViT with representation_size (pre_logits + tanh) has no zoo equivalent")
    layer0 = module.encoder.layers[0]
    mlp_hidden = module.mlp_dim
    num_classes = module.heads.head.out_features
    cfg = ViTConfig(
        img_size=module.image_size, patch_size=module.patch_size, in_chans=module.conv_proj.in_channels,
        num_classes=num_classes, dim=module.hidden_dim, depth=len(module.encoder.layers),
        num_heads=layer0.num_heads, mlp_ratio=mlp_ratio_for(module.hidden_dim, mlp_hidden), pool="token",
        fc_norm=False, norm_eps=layer0.ln_1.eps, activation="gelu",
    )
    model = VisionTransformer(cfg)
    sd = module.state_dict()
    out = {"cls_token": sd["class_token"], "pos_embed": sd["encoder.pos_embedding"],
           "patch_embed.proj.weight": sd["conv_proj.weight"].flatten(1), "patch_embed.proj.bias": sd["conv_proj.bias"],
           "encoder.norm.weight": sd["encoder.ln.weight"], "encoder.norm.bias": sd["encoder.ln.bias"],
           "head.weight": sd["heads.head.weight"], "head.bias": sd["heads.head.bias"]}
    for i in range(cfg.depth):
        t, z = f"encoder.layers.encoder_layer_{i}.", f"encoder.blocks.{i}."
        out.update({z + "attn." + k: v for k, v in _mha(t + "self_attention.", sd, fused=True).items()})
        for src, dst in (("ln_1", "norm1"), ("ln_2", "norm2"), ("mlp.0", "mlp.fc1"), ("mlp.3", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{z}{dst}.{p}"] = sd[f"{t}{src}.{p}"]
    return load_into(model, out)
