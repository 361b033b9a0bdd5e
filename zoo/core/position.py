"""Positional information: sinusoidal, learned absolute, T5 relative bias, rotary (RoPE)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)); shape (length, dim)."""
    if dim % 2:
        raise ValueError(f"sinusoidal encodings need an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos * freq
    table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # interleave: sin on even, cos on odd
    return rearrange(table, "l d two -> l (d two)").float()


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal table (Vaswani et al. 2017), added to token embeddings."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        check_length(offset + length, self.max_len)
        return self.table[offset: offset + length]


class LearnedPositionalEmbedding(nn.Module):
    """A learned table of absolute positions (BERT, CLIP text, ViT patches)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        check_length(offset + length, self.max_len)
        return self.weight[offset: offset + length]


def check_length(length: int, max_len: int) -> None:
    if length > max_len:
        raise ValueError(
            f"sequence of {length} positions exceeds the model's maximum of {max_len}; "
            "truncate the input (tokenizer max_length) or create the model with a larger max_len"
        )


def check_pad_token(pad_token_id: int, vocab_size: int) -> None:
    if not 0 <= pad_token_id < vocab_size:
        raise ValueError(f"pad_token_id={pad_token_id} is outside the vocabulary [0, {vocab_size}); "
                         "pass the tokenizer's pad_token_id and vocab_size")


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucketing of (key - query) offsets: exact for small offsets, logarithmic up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias: one learned scalar per (bucket, head), added to the scores."""

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, q_len: int, k_len: int, offset: int = 0) -> torch.Tensor:
        """Bias of shape (1, H, q_len, k_len); queries sit at positions offset..offset+q_len-1."""
        device = self.embedding.weight.device
        q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return rearrange(self.embedding(buckets), "q k h -> 1 h q k")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) applied to (B, H, L, D) queries and keys.

    Rotates feature pairs (i, i + D/2) by angle pos * base^(-2i/D) (the GPT-NeoX/LLaMA layout),
    so q·k depends on positions only through their difference.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_len: int = 4096):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = x.shape[-2]
        pos = torch.arange(offset, offset + length, device=x.device, dtype=torch.float32)
        angles = repeat(torch.outer(pos, self.inv_freq), "l d -> l (two d)", two=2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def resize_pos_grid(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bicubic resize of a (N, D) patch-position table laid out row-major on old_grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    grid = rearrange(pos, "(h w) d -> 1 d h w", h=old_grid[0], w=old_grid[1])
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    return rearrange(grid, "1 d h w -> (h w) d").to(pos.dtype)
