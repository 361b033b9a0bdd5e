"""Multi-head attention whose keys take no bias (BEiT, EVA, EVA-02).

A key bias b_k adds q·b_k to every score of a query row, a constant that softmax cancels, so these
models drop it and keep biases on queries and values only:

    q = x W_qᵀ + b_q,   k = x W_kᵀ,   v = x W_vᵀ + b_v

`QVBiasAttention` is the core's `MultiHeadAttention` (same heads, scale, recording protocol, rotary
hook) with only the projections changed: fused, `qkv` is a `QVBiasLinear` (one [q; k; v] weight and
the Parameters `q_bias`, `v_bias`, timm's layout); separate, `k` is a Linear without bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention


class QVBiasLinear(nn.Module):
    """y = x Wᵀ + [b_q; 0; b_v] with W = [W_q; W_k; W_v] of shape (q_features + 2·kv_features, in_features)."""

    def __init__(self, in_features: int, q_features: int, kv_features: int):
        super().__init__()
        self.in_features, self.q_features, self.kv_features = in_features, q_features, kv_features
        self.out_features = q_features + 2 * kv_features
        self.weight = nn.Parameter(torch.empty(self.out_features, in_features))
        self.q_bias = nn.Parameter(torch.zeros(q_features))
        self.v_bias = nn.Parameter(torch.zeros(kv_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat([self.q_bias, self.q_bias.new_zeros(self.kv_features), self.v_bias])
        return F.linear(x, self.weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, q_features={self.q_features}, kv_features={self.kv_features}, k_bias=False"


class QVBiasAttention(MultiHeadAttention):
    """Self-attention with biases on queries and values but not on keys (see the module docstring).

    Takes MultiHeadAttention's arguments; `qkv_bias=False` gives no bias at all (then it equals
    MultiHeadAttention). Cross-attention is refused (these models have none)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, **kwargs):
        if kwargs.get("cross"):
            raise ValueError("QVBiasAttention is a self-attention; use MultiHeadAttention(cross=True) for cross-attention")
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, **kwargs)
        if not qkv_bias:
            return
        inner, kv_inner = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.fused_qkv:
            self.qkv = QVBiasLinear(dim, inner, kv_inner)
        else:
            self.k = nn.Linear(self.k.in_features, kv_inner, bias=False)
