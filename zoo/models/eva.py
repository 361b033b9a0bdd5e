"""EVA-02 (Fang et al. 2023) and rotary-position ViTs (Heo et al. 2024, RoPE-ViT) on the shared core.

A ViT whose attention rotates queries and keys by a 2-D axial rotary table (`RotaryEmbedding2D`;
class tokens are not rotated), in timm's `Eva` layout:

    tokens = [cls, patches] (+ learned absolute positions, EVA-02)
    x = x + [γ1 ⊙] Attn(LN x, rope);   x = x + [γ2 ⊙] MLP(LN x)
    EVA-02: keys without bias (`QVBiasAttention`), SwiGLU MLP  fc2([LN](SiLU(x W_g) ⊙ x W_x)),
            hidden = int(dim · 8/3) (the LN over the hidden width for base/large), mean of the patch
            tokens -> LayerNorm (fc_norm) -> head
    RoPE-ViT (Naver axial): plain biased q/k/v, GELU MLP, no absolute positions, 'xy' rotary
            indexing with temperature 100, LayerScale, final LayerNorm -> class token -> head

The rotary table is built once per forward for the image's patch grid and shared by every block.
Images must have the configured size (as timm's default, non-dynamic models).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..contract import IMAGE_AXES, Inputs, ZooModel
from ..core import (
    BlockConfig,
    Dropout,
    FeedForward,
    QVBiasAttention,
    QVBiasLinear,
    RotaryEmbedding2D,
    TransformerStack,
    make_norm,
    resample_pos_state,
    multi_head_attention,
    trunc_normal_init,
)
from ..core.position import check_images
from ..features import block_feature_info, check_output_fmt, feature_take_indices, run_blocks, tokens_to_nchw
from ..registry import register_model
from .vit import PatchEmbed, VisionTransformer


@dataclass
class EvaConfig:
    img_size: int | tuple[int, int] = 224  # an int (square) or (height, width)
    patch_size: int = 14
    in_chans: int = 3
    num_classes: int = 0  # 0: no head, forward returns the pooled features (timm's EVA-02 MIM models)
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4 * 2 / 3  # hidden = int(dim * mlp_ratio)
    swiglu: bool = True  # packed SwiGLU MLP; False: fc2(act(fc1 x)) with `activation`
    activation: str = "gelu"
    mlp_norm: bool = False  # LayerNorm over the hidden width before fc2 (EVA-02 base/large; timm's scale_mlp)
    qkv_bias: bool = True
    key_bias: bool = False  # EVA: keys take no bias; RoPE-ViT: True
    fused_qkv: bool = True  # one [q; k; v] projection (EVA-02 tiny/small) or three (base/large)
    qk_norm: bool = False  # LayerNorm of each head's q and k over head_dim, before the rotation
    class_token: bool = True
    abs_pos: bool = True  # learned absolute positions (class slot included)
    rope: bool = True
    rope_temperature: float = 10000.0
    rope_indexing: str = "ij"  # 'ij': first half of each head rotates with the row; 'xy': with the column
    rope_ref_grid: tuple[int, int] | None = (16, 16)  # rescale rotary coordinates to this grid; None: raw indices
    layer_scale: float | None = None  # LayerScale γ init; None: none
    pool: str = "avg"  # "avg" (mean of patch tokens) or "token" (class token)
    fc_norm: bool | None = None  # LayerNorm after pooling instead of a final norm; None: only for avg pooling
    norm_eps: float = 1e-6
    head_init_scale: float = 0.001
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Eva(ZooModel, nn.Module):
    kind = "image_classifier"

    def image_tower(self) -> nn.Module:
        return self

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        h, w = self.img_size
        return Inputs({"images": torch.randn(batch, self.config.in_chans, h, w, generator=generator)}, {"images": IMAGE_AXES})

    def __init__(self, cfg: EvaConfig):
        super().__init__()
        if cfg.pool not in ("avg", "token"):
            raise ValueError(f"pool must be 'avg' or 'token', got {cfg.pool!r}")
        if cfg.pool == "token" and not cfg.class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='avg' without a class token")
        self.img_size = _pair(cfg.img_size)
        p = cfg.patch_size
        if any(s < p or s % p for s in self.img_size):
            raise ValueError(f"img_size={cfg.img_size} is not a multiple of patch_size={p}; choose an image size "
                             f"divisible by {p}")
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.dim
        self.grid = (self.img_size[0] // p, self.img_size[1] // p)
        self.num_prefix = 1 if cfg.class_token else 0
        use_fc_norm = cfg.pool == "avg" if cfg.fc_norm is None else cfg.fc_norm

        self.patch_embed = PatchEmbed(p, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        num_pos = self.num_prefix + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, cfg.dim)) if cfg.abs_pos else None
        self.pos_drop = Dropout(cfg.drop_rate)
        self.rope = None
        if cfg.rope:
            self.rope = RotaryEmbedding2D(cfg.dim // cfg.num_heads, self.grid, cfg.rope_temperature, cfg.rope_indexing,
                                          cfg.rope_ref_grid, num_prefix=self.num_prefix)
        block = BlockConfig(
            dim=cfg.dim, num_heads=cfg.num_heads, mlp_hidden=int(cfg.dim * cfg.mlp_ratio), norm_eps=cfg.norm_eps,
            activation="silu" if cfg.swiglu else cfg.activation, gated=cfg.swiglu, qkv_bias=cfg.qkv_bias,
            fused_qkv=cfg.fused_qkv, dropout=cfg.proj_drop_rate, mlp_dropout=cfg.proj_drop_rate,
            attn_dropout=cfg.attn_drop_rate, layer_scale=cfg.layer_scale, qk_norm=cfg.qk_norm,
        )
        self.encoder = TransformerStack(block, cfg.depth, drop_path=cfg.drop_path_rate, final_norm=not use_fc_norm,
                                        attn_layer=multi_head_attention if cfg.key_bias else self._qv_bias_attention,
                                        mlp_layer=self._mlp if cfg.mlp_norm else None)
        self.fc_norm = make_norm("layernorm", cfg.dim, cfg.norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.feature_info = block_feature_info(cfg.depth, cfg.dim, p)
        self.init_weights()

    @staticmethod
    def _qv_bias_attention(cfg: BlockConfig) -> QVBiasAttention:
        return QVBiasAttention(cfg.dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, fused_qkv=cfg.fused_qkv,
                               attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout,
                               qk_norm=cfg.norm if cfg.qk_norm else None, qk_norm_eps=cfg.norm_eps)

    @staticmethod
    def _mlp(cfg: BlockConfig) -> FeedForward:
        return FeedForward(cfg.dim, cfg.mlp_hidden, cfg.activation, cfg.gated, cfg.mlp_bias, cfg.mlp_dropout,
                           norm=cfg.norm, norm_eps=cfg.norm_eps)

    def init_weights(self) -> None:
        """timm's EVA init: Linear trunc_normal(0.02) with zero biases; the attention output and fc2 weights of
        block l divided by sqrt(2(l+1)); positions and class token trunc_normal(0.02); head ×head_init_scale."""
        trunc_normal_init(self)
        for m in self.modules():
            if isinstance(m, QVBiasLinear):  # the fused key-bias-free projection
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.q_bias)
                nn.init.zeros_(m.v_bias)
        for pos in (self.pos_embed, self.cls_token):
            if pos is not None:
                nn.init.trunc_normal_(pos, std=0.02)
        with torch.no_grad():
            for i, blk in enumerate(self.encoder.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
            if isinstance(self.head, nn.Linear) and self.config.head_init_scale:
                self.head.weight.mul_(self.config.head_init_scale)
                self.head.bias.mul_(self.config.head_init_scale)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def adapt_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Weights of another image size: the absolute positions resampled to this grid (as timm's EVA)."""
        resample_pos_state(state_dict, prefix + "pos_embed", self.pos_embed, self.num_prefix, self.grid)

    def check_images(self, x) -> None:
        """Float (B, in_chans, H, W) images of the configured size."""
        check_images(x, self.config.in_chans, self.config.patch_size)
        h, w = x.shape[-2:]
        if not torch.jit.is_tracing() and (h, w) != self.img_size:
            raise ValueError(f"image size {h}x{w} differs from the model's img_size {self.img_size[0]}x{self.img_size[1]}; "
                             f"resize the images to {self.img_size[0]}x{self.img_size[1]} or create the model with "
                             f"img_size=({h}, {w})")

    def embed(self, x: torch.Tensor):
        """Images -> (tokens (B, prefix + patches, dim), rotary table or None)."""
        self.check_images(x)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        rope = self.rope.at(self.grid, x.device) if self.rope is not None else None
        return self.pos_drop(x), rope

    def _encode(self, x: torch.Tensor, last_queries: int | None = None) -> torch.Tensor:
        x, rope = self.embed(x)
        return self.encoder(x, rope=rope, last_queries=last_queries)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, prefix + patches, dim) (final norm applied unless fc_norm)."""
        return self._encode(x)

    # The classifier end is the ViT's: pool (class token or mean of patches) -> fc_norm -> dropout -> head
    # (with a class-token head, forward's last block computes the class token only).
    head_queries = VisionTransformer.head_queries
    forward_head = VisionTransformer.forward_head
    forward = VisionTransformer.forward
    get_classifier = VisionTransformer.get_classifier
    reset_classifier = VisionTransformer.reset_classifier
    # the same module names: embedding, encoder.blocks.i, encoder.norm, fc_norm, head
    group_matcher = VisionTransformer.group_matcher
    prune_intermediate_layers = VisionTransformer.prune_intermediate_layers

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Block outputs with timm's semantics (zoo/features.py): `(final, [maps])` or `[maps]`.

        Maps are (B, dim, gh, gw) ('NCHW') or (B, gh·gw, dim) ('NLC') without the class token;
        return_prefix_tokens=True makes each entry (map, prefix tokens (B, prefix, dim)). norm=True applies
        the final norm (Identity for avg pooling with fc_norm, as in timm)."""
        check_output_fmt(output_fmt)
        take, _ = feature_take_indices(len(self.encoder.blocks), indices)
        x, rope = self.embed(x)
        x, maps = run_blocks(self.encoder.blocks, x, take, stop_early=stop_early,
                             checkpoint=self.encoder.gradient_checkpointing and self.training, rope=rope)
        maps = [self.encoder.norm(m) if norm else m for m in maps]
        prefix = [m[:, :self.num_prefix] for m in maps]
        maps = [m[:, self.num_prefix:] for m in maps]
        if output_fmt == "NCHW":
            maps = [tokens_to_nchw(m, self.grid) for m in maps]
        if return_prefix_tokens and self.num_prefix:
            maps = list(zip(maps, prefix))
        return maps if intermediates_only else (self.encoder.norm(x), maps)


_EVA02 = "Fang et al. 2023, EVA-02: A Visual Representation for Neon Genesis (arXiv:2303.11331)"
_ROPE_VIT = "Heo et al. 2024, Rotary Position Embedding for Vision Transformer (arXiv:2403.13298)"


def _register(name: str, paper: str, description: str, **kw):
    register_model(name, "eva", Eva, EvaConfig(**kw), paper, description)


_register("eva02_tiny_patch14_224", _EVA02, "EVA-02 Ti/14, 224px: 2-D RoPE, SwiGLU, no key bias, mean pooling, no head "
          "(timm's MIM model)", dim=192, depth=12, num_heads=3)
_register("eva02_small_patch14_224", _EVA02, "EVA-02 S/14, 224px: 2-D RoPE, SwiGLU, no key bias, mean pooling, no head "
          "(timm's MIM model)", dim=384, depth=12, num_heads=6)
_register("eva02_base_patch14_224", _EVA02, "EVA-02 B/14, 224px: 2-D RoPE, SwiGLU with a LayerNorm over the hidden "
          "width, separate q/k/v (no key bias), mean pooling, no head (timm's MIM model)", dim=768, depth=12, num_heads=12,
          fused_qkv=False, mlp_norm=True)
_register("vit_small_patch16_rope_224", _ROPE_VIT, "RoPE-ViT-S/16 (Naver, axial): 2-D RoPE ('xy', temperature 100) "
          "instead of absolute positions, LayerScale 1e-5, class-token pooling", patch_size=16, num_classes=1000,
          dim=384, depth=12, num_heads=6, mlp_ratio=4.0, swiglu=False, key_bias=True, abs_pos=False,
          rope_temperature=100.0, rope_indexing="xy", rope_ref_grid=None, layer_scale=1e-5, pool="token")
# Small-image variant for CPU training on the offline data sets.
_register("eva02_mnist", _EVA02, "EVA-02 for 28x28 grey digits (MNIST): patch 4 (7x7 grid), 2-D RoPE, SwiGLU, mean "
          "pooling", img_size=28, patch_size=4, in_chans=1, num_classes=10, dim=128, depth=6, num_heads=4,
          rope_ref_grid=None)
