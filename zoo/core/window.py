"""Shifted-window self-attention (Liu et al. 2021, Swin Transformer), a token mixer of the core.

`WindowAttention` plugs into the shared `TransformerBlock(cfg, attn_layer=...)`. It takes the tokens
as an image grid (B, H, W, C) - the block's norms, MLP and residuals work on any leading shape - and:

1. rolls the grid by (-s_h, -s_w) when the block is shifted: y'[h, w] = y[(h + s_h) mod H, (w + s_w) mod W];
2. zero-pads bottom/right to multiples of the window (w_h, w_w) (after the roll, as timm does; the pad
   tokens are not masked);
3. cuts the grid into windows, window index = wy * (Wp / w_w) + wx, token index t = py * w_w + px;
4. attends within each window: softmax(q kᵀ / sqrt(d) + B_rel + M) v, through `zoo.core.attention.attention`;
5. reverses 3, crops 2 and rolls back by (+s_h, +s_w).

B_rel[h, i, j] = T[idx(i, j), h] with a learned table T of shape ((2 w_h - 1)(2 w_w - 1), heads) and
idx = (y_i - y_j + w_h - 1)(2 w_w - 1) + (x_i - x_j + w_w - 1).

M is the shifted-window mask: on the padded grid each coordinate c of a dimension of size n gets the
region r(c) = [c >= n - w] + [c >= n - s] (0, 1 or 2; the second term only when s > 0), a position the
label 3 r_y + r_x, and M[win, i, j] = 0 when i and j carry the same label, else -100 (the paper's value).
Unshifted windows have no mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import MultiHeadAttention, attention, merge_heads

MASKED = -100.0  # the paper's (and timm's) additive mask value between regions of a shifted window


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, wh*ww, C); H, W multiples of the window, windows row-major."""
    return rearrange(x, "b (nh h) (nw w) c -> b (nh nw) (h w) c", h=window[0], w=window[1])


def window_reverse(windows: torch.Tensor, window: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of `window_partition`: (B, nW, wh*ww, C) -> (B, H, W, C) for the grid (H, W)."""
    return rearrange(windows, "b (nh nw) (h w) c -> b (nh h) (nw w) c", nh=grid[0] // window[0], h=window[0], w=window[1])


def relative_position_index(window: tuple[int, int], device=None) -> torch.Tensor:
    """(N, N) long, N = wh*ww: idx(i, j) = (y_i - y_j + wh - 1)(2 ww - 1) + (x_i - x_j + ww - 1)."""
    wh, ww = window
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)


def shift_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The additive mask (nW, N, N) of shifted windows on the padded `grid` (see the module docstring);
    None when nothing is shifted."""
    if not any(shift):
        return None

    def region(n: int, w: int, s: int) -> torch.Tensor:
        c = torch.arange(n, device=device)
        return (c >= n - w).long() + ((c >= n - s).long() if s else 0)

    labels = 3 * region(grid[0], window[0], shift[0])[:, None] + region(grid[1], window[1], shift[1])[None, :]
    labels = window_partition(labels[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    same = labels[:, :, None] == labels[:, None, :]
    return torch.where(same, 0.0, MASKED).to(dtype)


def window_geometry(resolution: tuple[int, int], window: int | tuple[int, int], shift: int | tuple[int, int],
                    always_partition: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """The window and shift a block really uses at a grid `resolution` (timm's rule): a dimension whose
    resolution is at most the window is one whole window, unshifted - unless `always_partition`."""
    window, shift = _pair(window), _pair(shift)
    if always_partition:
        return window, shift
    win = tuple(min(r, w) for r, w in zip(resolution, window))
    sft = tuple(0 if r <= w else s for r, w, s in zip(resolution, win, shift))
    return win, sft


class WindowAttention(MultiHeadAttention):
    """Multi-head self-attention inside (shifted) windows of a (B, H, W, C) grid, with a learned
    relative-position bias table. See the module docstring for the formula. The projections (`qkv`, rows
    q | k | v with heads outermost, and `proj`) are those of the core `MultiHeadAttention`.

    window, shift: (h, w) sizes; grid: the (H, W) the model is built for - its shift mask is kept as a
    buffer (other grids get theirs computed on the fly). Follows the recording protocol: with
    `record_weights` on, `last_weights` holds the (B * nW, heads, N, N) window probabilities.
    """

    def __init__(self, dim: int, num_heads: int, window: int | tuple[int, int], shift: int | tuple[int, int] = 0,
                 grid: tuple[int, int] | None = None, head_dim: int | None = None, qkv_bias: bool = True,
                 out_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias, out_bias=out_bias, attn_drop=attn_drop,
                         proj_drop=proj_drop)
        self.window, self.shift = _pair(window), _pair(shift)
        if min(self.window) < 1 or any(s < 0 or s >= w for s, w in zip(self.shift, self.window)):
            raise ValueError(f"window {self.window} needs sizes >= 1 and shift {self.shift} in [0, window); "
                             "the paper shifts by window // 2")
        wh, ww = self.window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        self.mask_grid = None if grid is None else self.padded(grid)
        mask = None if grid is None else shift_mask(self.mask_grid, self.window, self.shift)
        self.register_buffer("attn_mask", mask, persistent=False)

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}, num_heads={self.num_heads}"

    def padded(self, grid: tuple[int, int]) -> tuple[int, int]:
        return tuple(-(-g // w) * w for g, w in zip(grid, self.window))

    def relative_bias(self) -> torch.Tensor:
        """B_rel as (heads, N, N)."""
        n = self.window[0] * self.window[1]
        table = self.relative_position_bias_table[self.relative_position_index.flatten()]
        return rearrange(table, "(i j) h -> h i j", i=n, j=n)

    def window_mask(self, grid: tuple[int, int], x: torch.Tensor) -> torch.Tensor | None:
        """The shift mask (nW, N, N) for a padded grid: the stored one when it is the model's grid."""
        if grid == self.mask_grid:
            return self.attn_mask
        return shift_mask(grid, self.window, self.shift, device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                bias: torch.Tensor | None = None, rope=None, cache=None, need_weights: bool = False) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"window attention takes tokens as an image grid (batch, H, W, channels), got shape "
                             f"{tuple(x.shape)}; reshape with einops.rearrange(x, 'b (h w) c -> b h w c', h=H)")
        unsupported = [n for n, v in (("mask", mask), ("bias", bias), ("rope", rope), ("cache", cache)) if v is not None]
        if causal or unsupported:
            raise ValueError(f"window attention takes no {', '.join(unsupported + ['causal'] * causal)}: it masks by "
                             "window and shift only")
        b, h, w, _ = x.shape
        sh, sw = self.shift
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        hp, wp = self.padded((h, w))
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        windows = window_partition(x, self.window)  # (B, nW, N, C)
        nw = windows.shape[1]
        q, k, v = self._project(windows.flatten(0, 1), None)  # (B * nW, heads, N, d) each
        attn_bias = self.relative_bias()[None]  # (1, heads, N, N)
        shifted = self.window_mask((hp, wp), x)
        if shifted is not None:
            attn_bias = attn_bias + shifted[:, None]  # (nW, heads, N, N)
        # one bias per window of every image, (B * nW, heads, N, N): the layout SDPA's CPU kernel runs fastest
        attn_bias = attn_bias.expand(nw, -1, -1, -1)[None].expand(b, -1, -1, -1, -1).flatten(0, 1)
        out, weights = attention(q, k, v, bias=attn_bias, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0,
                                 need_weights=need_weights or self.record_weights)
        self.last_weights = weights
        out = self.proj_drop(self.proj(merge_heads(out).unflatten(0, (b, -1))))  # (B, nW, N, C)
        out = window_reverse(out, self.window, (hp, wp))[:, :h, :w]
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        return out


def window_attention(window: int | tuple[int, int], shift: int | tuple[int, int] = 0, grid: tuple[int, int] | None = None):
    """A factory `(BlockConfig) -> WindowAttention` for `TransformerBlock(cfg, attn_layer=...)`."""

    def build(cfg) -> WindowAttention:
        return WindowAttention(cfg.dim, cfg.num_heads, window, shift, grid=grid, head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias,
                               out_bias=cfg.out_bias, attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout)

    return build
