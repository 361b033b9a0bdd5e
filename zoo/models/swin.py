"""Swin Transformer v1 (Liu et al. 2021): a hierarchical ViT with shifted-window attention.

Patches (p x p) become a (H/p, W/p) grid of tokens, normed; four stages follow, each
[patch merging, except the first] + depth_i shared-core `TransformerBlock`s whose token mixer is the
core's `WindowAttention` (even blocks plain windows, odd blocks windows shifted by window // 2).
Patch merging halves the grid and doubles the width: the 2x2 neighbours
[x(2i, 2j), x(2i+1, 2j), x(2i, 2j+1), x(2i+1, 2j+1)] are concatenated (4C), normed and projected to 2C.
The stages keep the tokens as an image grid (B, H, W, C); the head averages the normed last map.
Stochastic depth rises linearly over all blocks of all stages. Equal to timm's `SwinTransformer`.
`stem="conv"` (not in timm) swaps the patch embedding for 3x3 convolutions (SwinConvStem), for small data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..contract import IMAGE_AXES, Inputs, ZooModel, image_batch
from ..core import Dropout, BlockConfig, TransformerBlock, make_norm, trunc_normal_init
from ..core.position import check_images
from ..core.window import window_attention, window_geometry
from ..features import check_output_fmt, feature_take_indices, prune_blocks, run_blocks
from ..registry import register_model
from .vit import ConvStem, PatchEmbed, VisionTransformer


@dataclass
class SwinConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96  # width of stage 0; stage i has embed_dim * 2**i
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    stem: str = "patch"  # "patch": a linear p x p patch embedding (the paper, timm); "conv": 3x3 convolutions (small data)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SwinPatchEmbed(PatchEmbed):
    """Patches -> a normed token grid (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, eps: float):
        super().__init__(patch_size, in_chans, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(rearrange(super().forward(x), "b (h w) c -> b h w c", h=x.shape[-2] // self.patch_size))


class SwinConvStem(nn.Module):
    """A stride-1 3x3 convolution at full resolution, then ViT's `ConvStem` (stride-2 3x3 convolutions down to
    the patch grid, 1x1 projection), normed as a (B, H/p, W/p, C) grid: the locality prior a Swin lacks on
    a few thousand images (Xiao et al. 2021, "Early convolutions help transformers see better")."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, eps: float):
        super().__init__()
        width = max(dim // 4, 8)
        self.conv = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.down = ConvStem(patch_size, width, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = rearrange(self.down(self.conv(x)), "b (h w) c -> b h w c", h=x.shape[-2] // self.patch_size)
        return self.norm(grid)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out): zero-pad to even, concatenate each 2x2
    neighbourhood column by column [top-left, bottom-left, top-right, bottom-right], LayerNorm(4C), Linear (no bias)."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        return self.reduction(self.norm(rearrange(x, "b (h dy) (w dx) c -> b h w (dx dy c)", dy=2, dx=2)))


class SwinStage(nn.Module):
    """[PatchMerging] then `depth` blocks on the grid `resolution`; odd blocks shift their windows."""

    def __init__(self, block: BlockConfig, depth: int, in_dim: int, resolution: tuple[int, int], window: int,
                 downsample: bool, drop_paths: list[float]):
        super().__init__()
        self.downsample = PatchMerging(in_dim, block.dim, block.norm_eps) if downsample else nn.Identity()
        blocks = []
        for i in range(depth):
            win, shift = window_geometry(resolution, window, 0 if i % 2 == 0 else window // 2)
            blocks.append(TransformerBlock(block, drop_path=drop_paths[i], attn_layer=window_attention(win, shift, resolution)))
        self.blocks = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class SwinTransformer(ZooModel, nn.Module):
    kind = "image_classifier"

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        stages = len(cfg.depths)
        if len(cfg.num_heads) != stages or stages < 1:
            raise ValueError(f"depths {tuple(cfg.depths)} and num_heads {tuple(cfg.num_heads)} need one entry per stage")
        size = _pair(cfg.img_size)
        if size[0] % cfg.patch_size or size[1] % cfg.patch_size:
            raise ValueError(f"img_size {size} is not divisible by patch_size={cfg.patch_size}; choose a multiple")
        self.config = cfg
        self.num_classes = cfg.num_classes
        dims = [cfg.embed_dim * 2 ** i for i in range(stages)]
        self.num_features = dims[-1]
        if cfg.stem not in ("patch", "conv"):
            raise ValueError(f"SwinConfig.stem={cfg.stem!r}: choose 'patch' (linear patch embedding) or 'conv'")
        stem = SwinPatchEmbed if cfg.stem == "patch" else SwinConvStem
        self.patch_embed = stem(cfg.patch_size, cfg.in_chans, dims[0], cfg.norm_eps)
        grid = (size[0] // cfg.patch_size, size[1] // cfg.patch_size)
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        layers, self.feature_info = [], []
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            resolution = tuple(-(-g // 2 ** i) for g in grid)
            block = BlockConfig(dim=dims[i], num_heads=heads, mlp_hidden=int(dims[i] * cfg.mlp_ratio), norm_eps=cfg.norm_eps,
                                qkv_bias=cfg.qkv_bias, dropout=cfg.drop_rate, attn_dropout=cfg.attn_drop_rate)
            start = sum(cfg.depths[:i])
            layers.append(SwinStage(block, depth, dims[max(i - 1, 0)], resolution, cfg.window_size, i > 0,
                                    rates[start:start + depth]))
            self.feature_info.append({"num_chs": dims[i], "reduction": cfg.patch_size * 2 ** i, "module": f"layers.{i}"})
        self.layers = nn.ModuleList(layers)
        self.norm = make_norm("layernorm", dims[-1], cfg.norm_eps)
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        trunc_normal_init(self)

    # -- the contract -------------------------------------------------------------------------
    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        h, w = _pair(cfg.img_size)
        images = image_batch(batch, cfg.in_chans, h, generator) if h == w else torch.randn(batch, cfg.in_chans, h, w, generator=generator)
        return Inputs({"images": images}, {"images": IMAGE_AXES})

    def image_tower(self) -> None:
        """None: window attention maps (B * windows, heads, N, N) are not the per-image token maps that
        `zoo viz attention` draws; `capture_attention(model)` records them."""
        return

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise lr decay: the stem first, then one group per block (a stage's patch
        merging with its first block; coarse: one group per stage), the final norm with the last block, the head last."""
        return dict(stem=r"^patch_embed",
                    blocks=r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+)\.downsample", (0,)),
                                                               (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                                                               (r"^norm", (99999,))])

    def prune_intermediate_layers(self, indices: int | list[int] | None = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's backbone trim: drop the stages after the last one `indices` takes (config.depths / num_heads,
        feature_info and num_features follow), the final norm with `prune_norm`, the classifier with `prune_head`.
        As in timm, a kept final norm is the last original stage's: with fewer stages, prune it too (or take the maps
        with intermediates_only and norm=False). Returns the absolute indices for forward_intermediates."""
        take = prune_blocks(self.layers, indices)
        stages = len(self.layers)
        self.config.depths, self.config.num_heads = tuple(self.config.depths[:stages]), tuple(self.config.num_heads[:stages])
        self.feature_info = self.feature_info[:stages]
        self.num_features = self.feature_info[-1]["num_chs"]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    # the head is ViT's: a Linear on the pooled features (num_classes=0: none), zero-initialised on reset
    get_classifier = VisionTransformer.get_classifier
    reset_classifier = VisionTransformer.reset_classifier

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the normed last stage map (B, H/(p 2^(S-1)), W/(p 2^(S-1)), C) (NHWC, as timm)."""
        check_images(x, self.config.in_chans, self.config.patch_size)
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The output of each stage in `indices` (timm's rule: None all, n the last n, a list those) as
        (B, C_i, H_i, W_i) ("NCHW") or (B, H_i W_i, C_i) ("NLC"). `norm` applies the final norm to the last
        stage's entry only (it is sized for it). Returns the list, or (norm(last map) NHWC, list) - with
        `stop_early` the stages after the last one taken are skipped and the map is that stage's, un-normed."""
        check_output_fmt(output_fmt)
        check_images(x, self.config.in_chans, self.config.patch_size)
        take, _ = feature_take_indices(len(self.layers), indices)
        x, maps = run_blocks(self.layers, self.patch_embed(x), take, stop_early=stop_early)
        last = len(self.layers) - 1
        maps = [self.norm(m) if norm and i == last else m for i, m in zip(sorted(set(take)), maps)]  # in stage order
        maps = [rearrange(m, "b h w c -> b c h w" if output_fmt == "NCHW" else "b h w c -> b (h w) c").contiguous()
                for m in maps]
        if intermediates_only:
            return maps
        ran_all = not stop_early or max(take) == last
        return (self.norm(x) if ran_all else x), maps


_PAPER = "Liu et al. 2021, Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (arXiv:2103.14030)"


def _register(name: str, description: str, **kw):
    register_model(name, "swin", SwinTransformer, SwinConfig(**kw), _PAPER, description)


_register("swin_tiny_patch4_window7_224", "Swin-T: C=96, depths 2-2-6-2, window 7, 224px")
_register("swin_small_patch4_window7_224", "Swin-S: C=96, depths 2-2-18-2, window 7, 224px", depths=(2, 2, 18, 2))
_register("swin_base_patch4_window7_224", "Swin-B: C=128, depths 2-2-18-2, window 7, 224px", embed_dim=128,
          depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
# Small-image variant for CPU training on MNIST-5k: a conv stem (3x3 at 28x28, then stride 2) -> a 14x14 grid of
# 7x7 windows (4 windows, shifted in the odd block), patch merging -> a 7x7 grid (one window); widths 64-128,
# head dim 32 as in every Swin. No stochastic depth: 3,600 images underfit more than they overfit.
_register("swin_mnist", "Swin for 28x28 grey digits: conv stem to a 14x14 grid, window 7, two stages (14x14, 7x7), C=64",
          img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depths=(2, 4), num_heads=(2, 4),
          mlp_ratio=2.0, drop_path_rate=0.0, stem="conv")
