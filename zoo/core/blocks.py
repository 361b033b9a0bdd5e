"""Transformer blocks and stacks, shared by every family.

A `BlockConfig` holds the choices that distinguish the families (norm placement and kind,
activation, biases, score scaling); families fill one in instead of passing dozens of flags.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention
from .layers import DropPath, FeedForward, make_norm
from .position import RotaryEmbedding


@dataclass
class BlockConfig:
    dim: int
    num_heads: int
    mlp_hidden: int
    head_dim: int | None = None  # None: dim // num_heads (T5 sets d_kv independently)
    norm_first: bool = True  # pre-norm (ViT, T5, CLIP) vs post-norm (BERT, the 2017 paper)
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-6
    norm_bias: bool = True
    activation: str = "gelu"
    gated: bool = False  # GEGLU / SwiGLU feed-forward
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    fused_qkv: bool = True
    attn_scale: float | None = None  # None: 1/sqrt(head_dim); T5 uses 1.0
    dropout: float = 0.0  # on residual branches
    attn_dropout: float = 0.0
    mlp_dropout: float = 0.0  # inside the FFN, after the activation


class TransformerBlock(nn.Module):
    """Self-attention [+ cross-attention] + feed-forward, each a residual sub-layer.

    pre-norm:  x = x + drop_path(sub(norm(x)))
    post-norm: x = norm(x + sub(x))
    """

    def __init__(self, cfg: BlockConfig, cross_attention: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.norm_first = cfg.norm_first
        attn_kw = dict(head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, scale=cfg.attn_scale,
                       attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout)
        self.norm1 = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.attn = MultiHeadAttention(cfg.dim, cfg.num_heads, fused_qkv=cfg.fused_qkv, **attn_kw)
        self.cross_attn = None
        if cross_attention:
            self.norm_cross = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
            self.cross_attn = MultiHeadAttention(cfg.dim, cfg.num_heads, cross=True, **attn_kw)
        self.norm2 = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.mlp = FeedForward(cfg.dim, cfg.mlp_hidden, cfg.activation, cfg.gated, cfg.mlp_bias, cfg.mlp_dropout)
        self.mlp_drop = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def _residual(self, x, norm, fn):
        if self.norm_first:
            return x + self.drop_path(fn(norm(x)))
        return norm(x + self.drop_path(fn(x)))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> torch.Tensor:
        x = self._residual(x, self.norm1, lambda h: self.attn(h, mask=mask, causal=causal, bias=bias, rope=rope, cache=cache,
                                                              need_weights=need_weights))
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(h, context=context, mask=context_mask, cache=cache,
                                                                             need_weights=need_weights))
        return self._residual(x, self.norm2, lambda h: self.mlp_drop(self.mlp(h)))


class TransformerStack(nn.Module):
    """`depth` blocks with linearly increasing stochastic depth and an optional final norm."""

    def __init__(self, cfg: BlockConfig, depth: int, cross_attention: bool = False, drop_path: float = 0.0, final_norm: bool = True):
        super().__init__()
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(TransformerBlock(cfg, cross_attention, r) for r in rates)
        self.norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias) if final_norm else nn.Identity()
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and kwargs.get("cache") is None:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kwargs)
            else:
                x = block(x, **kwargs)
        return self.norm(x)
