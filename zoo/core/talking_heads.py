"""Talking-heads attention (Shazeer et al. 2020, arXiv:2003.02436), as used by CaiT (Touvron et al. 2021).

Multi-head attention whose heads exchange information twice, by learned H×H linear maps over the
head axis, applied independently at every (query i, key j) position:

    A[h]  = scale · q_h k_hᵀ (+ bias[h])                  logits of head h, (Lq, Lk)
    A'[g] = Σ_h W_l[g, h] · A[h] + b_l[g]                   pre-softmax mixing  (`proj_l`, timm's name)
    P[g]  = softmax_j(A'[g])                                (masked positions excluded)
    P'[g] = Σ_h W_w[g, h] · P[h] + b_w[g]                   post-softmax mixing (`proj_w`)
    out   = proj(concat_g P'[g] v_g)

P' rows no longer sum to one. The logits must be materialised (the mixing sits between the scores
and the softmax), so this attention always takes the math path — as timm's `TalkingHeadAttn` does.
The mixing is one einsum over the head axis (no Linear over a permuted copy of the map, which
measured 2-3x slower on CPU).

Recording protocol (see `zoo.core.attention`): while `record_weights` is True, `last_weights` holds
P, the softmax probabilities (B, H, Lq, Lk) between the two mixings — rows sum to one, as for every
attention of the core; the map that multiplies the values is `proj_w` applied to it.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention, merge_heads
from .layers import dropout
from .masks import causal_mask, combine_masks
from .position import RotaryEmbedding


class HeadMixer(nn.Module):
    """A learned linear map over the head axis of an attention map, at every (i, j):

        out[:, g] = Σ_h weight[g, h] · scores[:, h] + bias[g]      for scores (B, H, Lq, Lk)

    The parameters are shaped as an H×H `nn.Linear` (timm's `proj_l` / `proj_w` load as they are) and
    initialised as timm does (truncated normal, std 0.02; zero bias). It is not an nn.Linear so that
    int8 dynamic quantization leaves this H×H map in float (it would save nothing)."""

    def __init__(self, num_heads: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, num_heads))
        self.bias = nn.Parameter(torch.zeros(num_heads)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("gh,bhij->bgij", self.weight, scores)
        return out if self.bias is None else out + self.bias[:, None, None]


class TalkingHeadsAttention(MultiHeadAttention):
    """Self-attention with talking heads: the core's fused-qkv `MultiHeadAttention` (projections `qkv`,
    `proj`, heads outermost; its optional `q_norm` / `k_norm`) plus the head mixers `proj_l` (before the softmax) and `proj_w` (after).

    Called like the core's attention, `attn(x, mask=, causal=, bias=, rope=, need_weights=)`; `mask`
    (True = attend) and `causal` act after the pre-softmax mixing, `bias` is added to the logits before it.
    A KV cache is refused: the mixing needs every head's full score row."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, out_bias: bool = True, scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, mixer_bias: bool = True, qk_norm: str | None = None,
                 qk_norm_eps: float = 1e-6):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, out_bias=out_bias, fused_qkv=True, scale=scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps)
        self.proj_l = HeadMixer(num_heads, bias=mixer_bias)
        self.proj_w = HeadMixer(num_heads, bias=mixer_bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        cache=None,
        need_weights: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        if cache is not None:
            raise ValueError("TalkingHeadsAttention does not decode incrementally (cache=...): the head mixing needs "
                             "the full score rows of every head; run it on the whole sequence")
        if kwargs.get("context") is not None:
            raise ValueError("TalkingHeadsAttention is a self-attention; for cross-attention use MultiHeadAttention(cross=True)")
        q, k, v = self._project(x, None)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        scale = self.head_dim ** -0.5 if self.scale is None else self.scale
        scores = torch.matmul(q * scale, k.transpose(-2, -1))
        if bias is not None:
            scores = scores + bias
        scores = self.proj_l(scores)
        if causal:
            mask = combine_masks(mask, causal_mask(q.shape[-2], k.shape[-2], q.device))
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        self.last_weights = probs if (need_weights or self.record_weights) else None
        mixed = dropout(self.proj_w(probs), self.attn_drop, self.training)
        out = torch.matmul(mixed, v)
        return self.proj_drop(self.proj(merge_heads(out)))


def talking_heads_attention(cfg) -> TalkingHeadsAttention:
    """`attn_layer` factory for `TransformerBlock(cfg, attn_layer=talking_heads_attention)` (a `BlockConfig`)."""
    if cfg.head_dim not in (None, cfg.dim // cfg.num_heads) or cfg.num_kv_heads not in (None, cfg.num_heads):
        raise ValueError(f"talking-heads attention needs head_dim = dim // num_heads and num_kv_heads = num_heads, got "
                         f"head_dim={cfg.head_dim}, num_kv_heads={cfg.num_kv_heads}; leave both None")
    return TalkingHeadsAttention(cfg.dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, scale=cfg.attn_scale,
                                 attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout,
                                 qk_norm=cfg.norm if getattr(cfg, "qk_norm", False) else None, qk_norm_eps=cfg.norm_eps)
