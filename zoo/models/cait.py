"""CaiT: Class-Attention in Image Transformers (Touvron et al. 2021, "Going deeper with image transformers").

Two stages, both on the shared core:

1. The trunk: patch tokens (no class token) + learned positions, then `depth` pre-norm blocks with
   talking-heads self-attention and LayerScale,
       x = x + γ1 ⊙ TH-Attn(norm1 x);  x = x + γ2 ⊙ MLP(norm2 x)        (γ initialised to `init_values`)
2. Class attention: a class token (which never gets a position embedding) enters only now and is the
   only query of `class_depth` blocks; keys and values come from u = [cls; x] (class token first):
       u   = norm1([cls; x])
       cls = cls + γ1 ⊙ Attn(q = u_cls, k = v = u)
       cls = cls + γ2 ⊙ MLP(norm2 cls)
   The patch tokens are not updated. The output is norm([cls; x]); the head reads the class token
   (or the mean of the patch tokens with pool="avg").

Parameter names follow timm where the structures agree (`blocks.*.attn.{qkv,proj_l,proj_w,proj}`,
`class_blocks.*.attn.{q,k,v,proj}`); LayerScale is `ls1.gamma` / `ls2.gamma` (timm: `gamma_1` / `gamma_2`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..contract import ZooModel
from ..core import (
    BlockConfig,
    DropPath,
    Dropout,
    FeedForward,
    LayerScale,
    MultiHeadAttention,
    TransformerBlock,
    TransformerStack,
    make_norm,
    resample_pos_state,
    resize_pos_grid,
    talking_heads_attention,
    trunc_normal_init,
)
from ..core.position import check_images
from ..features import (block_feature_info, check_output_fmt, feature_take_indices, prune_blocks, run_blocks,
                        tokens_to_nchw)
from ..registry import register_model
from .vit import ConvStem, PatchEmbed, VisionTransformer


@dataclass
class CaiTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 192
    depth: int = 24  # talking-heads self-attention blocks
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_depth: int = 2  # class-attention blocks
    class_mlp_ratio: float = 4.0
    init_values: float = 1e-5  # LayerScale γ init (1e-5 up to depth 24, 1e-6 deeper, as in the paper)
    pool: str = "token"  # "token" (the class token) or "avg" (mean of the patch tokens)
    stem: str = "patch"  # "patch": linear patch projection (timm's conv); "conv": zoo's small conv stem (vit.ConvStem)
    norm_eps: float = 1e-6
    activation: str = "gelu"
    drop_rate: float = 0.0  # before the head
    pos_drop_rate: float = 0.0  # after the position embedding
    proj_drop_rate: float = 0.0  # trunk: after the attention projection and inside/after the MLP
    attn_drop_rate: float = 0.0  # trunk: on the (mixed) attention map
    drop_path_rate: float = 0.0  # trunk: the same rate in every block (CaiT's rule, not a linear ramp)


class ClassAttentionBlock(nn.Module):
    """One class-attention block: only the class token is updated (formula in the module docstring).

    The attention is the core's `MultiHeadAttention` in cross mode (separate q, k, v projections): the
    query is the normed class token, the context the normed [cls; patches]."""

    def __init__(self, cfg: BlockConfig, init_values: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.attn = MultiHeadAttention(cfg.dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, cross=True,
                                       attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout)
        self.ls1 = LayerScale(cfg.dim, init_values)
        self.norm2 = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.mlp = FeedForward(cfg.dim, cfg.mlp_hidden, cfg.activation, cfg.gated, cfg.mlp_bias, cfg.mlp_dropout)
        self.mlp_drop = Dropout(cfg.dropout)
        self.ls2 = LayerScale(cfg.dim, init_values)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """x: patch tokens (B, N, D), cls: (B, 1, D) -> the updated class token (B, 1, D)."""
        u = self.norm1(torch.cat([cls, x], dim=1))
        cls = cls + self.drop_path(self.ls1(self.attn(u[:, :1], context=u)))
        return cls + self.drop_path(self.ls2(self.mlp_drop(self.mlp(self.norm2(cls)))))


class CaiT(ZooModel, nn.Module):
    kind = "image_classifier"
    no_split_modules = (TransformerBlock, ClassAttentionBlock)

    # images (B, in_chans, img_size, img_size) as ViT's; the model is its own image tower
    example_inputs = VisionTransformer.example_inputs

    def image_tower(self) -> None:
        """None: the patch blocks have no class token and the class-attention maps are (1 x tokens), which the
        ViT rollout of `zoo viz attention` does not read; `capture_attention(model)` records both kinds."""
        return

    def __init__(self, cfg: CaiTConfig):
        super().__init__()
        if cfg.pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' (the class token) or 'avg' (mean of the patch tokens), got {cfg.pool!r}")
        if cfg.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {cfg.stem!r}")
        if cfg.depth < 1 or cfg.class_depth < 1:
            raise ValueError(f"CaiT needs depth >= 1 and class_depth >= 1, got depth={cfg.depth}, class_depth={cfg.class_depth}")
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size={cfg.img_size} is not divisible by patch_size={cfg.patch_size}; "
                             f"choose an img_size that is a multiple of {cfg.patch_size}")
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.dim
        self.grid = (cfg.img_size // cfg.patch_size,) * 2
        self.num_prefix = 1  # the class token, in front of the output tokens

        stem = ConvStem if cfg.stem == "conv" else PatchEmbed
        self.patch_embed = stem(cfg.patch_size, cfg.in_chans, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], cfg.dim))
        self.pos_drop = Dropout(cfg.pos_drop_rate)
        common = dict(dim=cfg.dim, num_heads=cfg.num_heads, norm_eps=cfg.norm_eps, activation=cfg.activation,
                      qkv_bias=cfg.qkv_bias, layer_scale=cfg.init_values)
        trunk = BlockConfig(mlp_hidden=int(cfg.dim * cfg.mlp_ratio), dropout=cfg.proj_drop_rate,
                            mlp_dropout=cfg.proj_drop_rate, attn_dropout=cfg.attn_drop_rate, **common)

        def block(c, cross, _rate, **kw):  # every block drops its branches with the same rate
            return TransformerBlock(c, cross, cfg.drop_path_rate, **kw)

        self.encoder = TransformerStack(trunk, cfg.depth, final_norm=False, attn_layer=talking_heads_attention, block_fn=block)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        head_cfg = BlockConfig(mlp_hidden=int(cfg.dim * cfg.class_mlp_ratio), **common)
        self.class_blocks = nn.ModuleList(ClassAttentionBlock(head_cfg, cfg.init_values) for _ in range(cfg.class_depth))
        self.norm = make_norm("layernorm", cfg.dim, cfg.norm_eps)
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.feature_info = block_feature_info(cfg.depth, cfg.dim, cfg.patch_size)
        self.init_weights()

    def init_weights(self):
        trunc_normal_init(self)  # every Linear as timm (the head mixers proj_l / proj_w init themselves alike)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def adapt_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Weights of another image size: the patch positions resampled to this grid (as timm)."""
        resample_pos_state(state_dict, prefix + "pos_embed", self.pos_embed, 0, self.grid)

    # -- the two stages -------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images -> position-embedded patch tokens (B, N, D) and the patch grid."""
        check_images(x, self.config.in_chans, self.config.patch_size)
        grid = (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)
        pos = resize_pos_grid(self.pos_embed[0], self.grid, grid)  # other image sizes: bicubic interpolation
        return self.pos_drop(self.patch_embed(x) + pos[None]), grid

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) -> [cls; x] (B, 1 + N, D) after the class-attention blocks (before the norm); x
        itself once prune_intermediate_layers removed the class token and its blocks."""
        if self.cls_token is None:
            return x
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for blk in self.class_blocks:
            cls = blk(x, cls)
        return torch.cat([cls, x], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normed tokens (B, 1 + patches, dim), class token first."""
        x, _ = self._embed(x)
        return self.norm(self.forward_cls(self.encoder(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.config.pool == "token" else x[:, self.num_prefix:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's semantics (zoo/features.py): the maps are outputs of the talking-heads blocks (`indices`
        count over them only), patch tokens only (the trunk has no class token), NCHW (B, D, H/p, W/p) or
        NLC (B, N, D); `norm=True` applies the final norm to each. Returns (norm([cls; x]), maps), or the
        maps only. With stop_early the class attention runs on the last taken block's output (as timm)."""
        check_output_fmt(output_fmt)
        take, _ = feature_take_indices(len(self.encoder.blocks), indices)
        x, grid = self._embed(x)
        checkpoint = self.encoder.gradient_checkpointing and self.training
        x, maps = run_blocks(self.encoder.blocks, x, take, stop_early=stop_early, checkpoint=checkpoint)
        maps = [self.norm(m) if norm else m for m in maps]
        if output_fmt == "NCHW":
            maps = [tokens_to_nchw(m, grid) for m in maps]
        if intermediates_only:
            return maps
        return self.norm(self.forward_cls(x)), maps

    def prune_intermediate_layers(self, indices: int | list[int] | None = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's backbone trim: drop the talking-heads blocks after the last one `indices` takes (config.depth and
        feature_info follow), the final norm with `prune_norm`, and with `prune_head` the class token, the
        class-attention blocks and the classifier, as timm: forward_features(x) is then norm(trunk(x)) over the patch
        tokens, and forward(x) their mean (the pooled features, as a pruned ViT). Returns the absolute indices to
        pass to forward_intermediates."""
        take = prune_blocks(self.encoder.blocks, indices)
        self.config.depth = len(self.encoder.blocks)
        self.feature_info = self.feature_info[:self.config.depth]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.cls_token, self.class_blocks, self.num_prefix = None, nn.ModuleList(), 0
            self.config.pool = "avg"
            self.reset_classifier(0)
        return take

    def group_matcher(self, coarse: bool = False):
        """timm's parameter groups for layer-wise lr decay: the embedding first, then one group per self-attention
        block; the class-attention blocks share the groups of the last self-attention blocks, and the final norm that
        of the last one (as timm's CaiT); the head last."""
        depth, extra = len(self.encoder.blocks), len(self.class_blocks)

        def layer(name: str) -> float:
            if name.startswith(("cls_token", "pos_embed", "patch_embed")):
                return 0
            parts = name.split(".")
            if name.startswith("encoder.blocks."):
                return int(parts[2]) + 1
            if name.startswith("class_blocks."):
                return int(parts[1]) + depth - extra + 1
            if name.startswith(("norm.", "encoder.norm.")):
                return depth
            return float("inf")

        return layer

    # the head is ViT's: a Linear on num_features, re-created zero-initialised
    get_classifier = VisionTransformer.get_classifier
    reset_classifier = VisionTransformer.reset_classifier


_PAPER = "Touvron et al. 2021, Going deeper with Image Transformers (arXiv:2103.17239)"


def _register(name: str, description: str, **kw):
    register_model(name, "cait", CaiT, CaiTConfig(**kw), _PAPER, description)


_register("cait_xxs24_224", "CaiT-XXS24: 24 talking-heads blocks + 2 class-attention blocks, D 192, 4 heads, 224px",
          dim=192, depth=24, num_heads=4)
_register("cait_s24_224", "CaiT-S24: 24 talking-heads blocks + 2 class-attention blocks, D 384, 8 heads, 224px",
          dim=384, depth=24, num_heads=8)
# Small-image variant for CPU training on MNIST-5k.
_register("cait_mnist", "CaiT for 28x28 grey digits: conv stem to a 7x7 grid, 6 talking-heads + 2 class-attention blocks, "
          "D 128, 4 heads", img_size=28, patch_size=4, in_chans=1, num_classes=10, dim=128, depth=6, num_heads=4,
          mlp_ratio=2.0, class_mlp_ratio=2.0, stem="conv", init_values=1e-1)
