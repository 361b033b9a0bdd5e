"""Vision Transformer (Dosovitskiy et al. 2020), sizes as in DeiT (Touvron et al. 2021).

An image is cut into patches (einops), each patch is projected to a token, a class token is
prepended, learned positions are added, and a pre-norm encoder stack from the shared core runs.

Options (timm's names in brackets), which the DeiT III and DINOv2-register variants below use:
    reg_tokens R      R learned register tokens (Darcet et al. 2024); token order [cls, reg_1..reg_R, patches]
    no_embed_class    positions are added to the patch tokens only (DeiT III): x = [cls, reg, patches + pos]
                      instead of [cls, reg, patches] + pos
    qk_norm           LayerNorm of each head's q and k over head_dim before the scale (attn.q_norm/k_norm)
    layer_scale       [init_values] LayerScale: x = x + γ ⊙ branch(norm(x)), γ initialised to this value

Switches for variant comparisons (one config field each, built from the shared core; the defaults are the
ViT above, whose timm/HF parity and shipped weights they keep):
    pos_embed         "learn": learned absolute positions (as above); "sincos": MAE's fixed 2-D sin-cos table
                      (zoo.core.sincos_table_2d, a buffer, not a parameter) added to the patch tokens only, computed
                      for the input's grid; "rope": 2-D axial rotary positions on q and k in every attention
                      (zoo.core.RotaryEmbedding2D, as EVA-02: temperature 10000, 'ij' indexing, raw grid
                      coordinates, prefix tokens not rotated), no additive positions; "none": no positions
    norm              "layernorm" or "rmsnorm": every token norm (blocks, final norm, fc_norm, pre_norm, QK-norm);
                      the conv stem keeps its BatchNorm
    norm_first        True: pre-norm blocks x + f(norm(x)); False: post-norm blocks norm(x + f(x)) (Vaswani et al.
                      2017, BERT), and then no final norm after the stack (every block already ends with one)
    mlp               "mlp": fc2(act(fc1 x)), hidden = int(dim · mlp_ratio); "glu": gated fc2(act(fc1 x) ⊙ gate x)
                      (GEGLU with activation="gelu", SwiGLU with activation="silu") at a matched parameter count:
                      hidden = round(2/3 · int(dim · mlp_ratio)) (zoo.core.glu_hidden), so its 3·dim·hidden weights
                      equal the plain MLP's 2·dim·hidden (the biases differ by hidden/3: under 1% of the FFN)

`forward_intermediates` returns the output of chosen blocks as maps (zoo/features.py).

With class-token pooling, `forward` lets the last block compute the rows the head reads only (`head_queries()`:
the class token; DeiT's distilled model adds its distillation token): that block's keys and values still come from
every token, but its queries, output projection and feed-forward run on one row instead of 1 + patches. The logits
and gradients are those of forward_head(forward_features(x)) (equal in float64; float32 differs by rounding);
ViT-S/16's forward and training step do about 1/12 less work. `forward_features`, `forward_intermediates`,
`capture_attention` and forward hooks on the last block (or inside it) still see every token of every block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..core import (
    AxialRotaryTable,
    BlockConfig,
    Dropout,
    RotaryEmbedding2D,
    TransformerStack,
    glu_hidden,
    make_norm,
    resample_pos_state,
    resize_pos_grid,
    sincos_table_2d,
    trunc_normal_init,
)
from ..core.position import check_images
from ..contract import IMAGE_AXES, Inputs, ZooModel, image_batch
from ..features import (block_feature_info, check_output_fmt, feature_take_indices, prune_blocks, run_blocks,
                        split_prefix_maps)
from ..registry import register_model


@dataclass
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens)
    fc_norm: bool | None = None  # norm after pooling instead of before; None: only for avg pooling (timm)
    pooler: bool = False  # dense + tanh on the pooled features before the head: transformers' ViTModel pooler
    #                       (pooler_output; the original ViT's pre-logits layer)
    class_token: bool = True
    reg_tokens: int = 0  # register tokens after the class token (Darcet et al. 2024)
    no_embed_class: bool = False  # positions for the patch tokens only, none for the class / register tokens
    qk_norm: bool = False  # LayerNorm of q and k per head (Dehghani et al. 2023)
    layer_scale: float | None = None  # LayerScale γ init (timm's init_values); None: no LayerScale
    pos_resize_antialias: bool = False  # other input sizes: antialiased bicubic resize of the positions (timm's
    #                                     dynamic_img_size); False: plain bicubic
    stem: str = "patch"  # "patch": linear patch projection; "conv": small conv stem (Xiao et al. 2021)
    norm_eps: float = 1e-6
    activation: str = "gelu"
    pre_norm: bool = False  # a norm before the blocks (CLIP's ln_pre)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # switches for variant comparisons (module docstring); the defaults are the ViT of the paper
    pos_embed: str = "learn"  # "learn", "sincos" (fixed 2-D, MAE), "rope" (2-D axial rotary, EVA-02) or "none"
    norm: str = "layernorm"  # or "rmsnorm": every token norm of the model
    norm_first: bool = True  # False: post-norm blocks, norm(x + f(x)), and no final norm
    mlp: str = "mlp"  # or "glu": gated FFN (GEGLU / SwiGLU by `activation`) at the plain MLP's parameter count


POS_EMBEDS = ("learn", "sincos", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("mlp", "glu")


def check_switches(cfg: ViTConfig) -> None:
    """ValueError naming the field and its allowed values for a bad switch."""
    for field, allowed in (("pos_embed", POS_EMBEDS), ("norm", NORMS), ("mlp", MLPS)):
        value = getattr(cfg, field)
        if value not in allowed:
            raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if not isinstance(cfg.norm_first, bool):
        raise ValueError(f"norm_first must be True (pre-norm) or False (post-norm), got {cfg.norm_first!r}")
    if cfg.pos_embed == "rope" and (cfg.dim % cfg.num_heads or (cfg.dim // cfg.num_heads) % 4):
        raise ValueError(f"pos_embed='rope' needs a head_dim (dim // num_heads) divisible by 4, got dim={cfg.dim}, "
                         f"num_heads={cfg.num_heads}; change dim or num_heads, or use pos_embed 'learn', 'sincos' or 'none'")
    if cfg.pos_embed == "sincos" and cfg.dim % 4:
        raise ValueError(f"pos_embed='sincos' needs a dim divisible by 4, got dim={cfg.dim}")
    if cfg.layer_scale is not None and not cfg.norm_first:
        raise ValueError(f"layer_scale={cfg.layer_scale} needs pre-norm blocks (norm_first=True); set layer_scale=None "
                         "for post-norm blocks")


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: `b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)` then Linear.

    Equal to timm's stride-p convolution with its weight reshaped to (dim, c*p*p), and computed as that
    convolution (the Linear's weight viewed as (dim, c, p, p)): it reads the image in place, where the einops
    patch layout above costs a copy of the whole batch (about 20% of this layer at ViT-S/16, batch 16)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size * patch_size, dim, bias=bias)

    def forward(self, x):
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}; resize or pad the images")
        weight = getattr(self.proj, "weight", None)
        if type(self.proj) is not nn.Linear or type(weight) not in (torch.Tensor, nn.Parameter):
            # a quantized / wrapped projection (int8, torchao): it reads the patches through its own forward
            return self.proj(rearrange(x, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=p, p2=p))
        weight = weight.unflatten(1, (-1, p, p))  # (dim, c*p*p) -> (dim, c, p, p), a view
        return rearrange(F.conv2d(x, weight, self.proj.bias, stride=p), "b d gh gw -> b (gh gw) d")


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions down to the patch grid, then a 1x1 projection.

    Early convolutions give a ViT the locality prior it lacks, which matters most on small data."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        steps = int(math.log2(patch_size))
        if 2 ** steps != patch_size:
            raise ValueError(f"the conv stem needs a power-of-two patch_size, got {patch_size}")
        layers, ch = [], in_chans
        for i in range(steps):
            out = dim // 2 ** (steps - i)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        layers.append(nn.Conv2d(ch, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return rearrange(self.net(x), "b d gh gw -> b (gh gw) d")


class VisionTransformer(ZooModel, nn.Module):
    kind = "image_classifier"

    def image_tower(self) -> nn.Module:
        return self

    def example_inputs(self, batch: int = 2, length: int = 16, generator: torch.Generator | None = None) -> Inputs:
        cfg = self.config
        return Inputs({"images": image_batch(batch, cfg.in_chans, cfg.img_size, generator)}, {"images": IMAGE_AXES})

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' or 'avg', got {cfg.pool!r}")
        if cfg.pool == "token" and not cfg.class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='avg' without a class token")
        if cfg.reg_tokens < 0:
            raise ValueError(f"reg_tokens must be >= 0, got {cfg.reg_tokens}")
        if cfg.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {cfg.stem!r}")
        check_switches(cfg)
        self.check_image_size(cfg, cfg.img_size, cfg.img_size)
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.dim
        self.grid = (cfg.img_size // cfg.patch_size,) * 2
        self.num_prefix = (1 if cfg.class_token else 0) + cfg.reg_tokens
        use_fc_norm = cfg.pool == "avg" if cfg.fc_norm is None else cfg.fc_norm
        num_patches = self.grid[0] * self.grid[1]

        if cfg.stem == "conv":
            self.patch_embed = ConvStem(cfg.patch_size, cfg.in_chans, cfg.dim)
        else:
            self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.dim, bias=not cfg.pre_norm)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, cfg.dim)) if cfg.reg_tokens else None
        self.pos_embed = None  # learned positions ("learn")
        if cfg.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, self._pos_slots() + num_patches, cfg.dim))
        if cfg.pos_embed == "sincos":  # fixed, rebuilt from the config: not in the state dict
            self.register_buffer("pos_table", sincos_table_2d(self.grid, cfg.dim), persistent=False)
        # 2-D rotary positions: no parameters, a table per forward for the input's grid
        self.rope = RotaryEmbedding2D(cfg.dim // cfg.num_heads, self.grid, num_prefix=self.num_prefix) \
            if cfg.pos_embed == "rope" else None
        self.pos_drop = Dropout(cfg.drop_rate)
        self.norm_pre = make_norm(cfg.norm, cfg.dim, cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        mlp_hidden = int(cfg.dim * cfg.mlp_ratio)
        block = BlockConfig(
            dim=cfg.dim, num_heads=cfg.num_heads, norm=cfg.norm, norm_first=cfg.norm_first, norm_eps=cfg.norm_eps,
            mlp_hidden=glu_hidden(mlp_hidden) if cfg.mlp == "glu" else mlp_hidden, gated=cfg.mlp == "glu",
            activation=cfg.activation, qkv_bias=cfg.qkv_bias, dropout=cfg.drop_rate, attn_dropout=cfg.attn_drop_rate,
            qk_norm=cfg.qk_norm, layer_scale=cfg.layer_scale,
        )
        # post-norm blocks end with a norm: no final norm after them (as the 2017 Transformer and BERT)
        self.encoder = TransformerStack(block, cfg.depth, drop_path=cfg.drop_path_rate,
                                        final_norm=not use_fc_norm and cfg.norm_first)
        self.fc_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps) if use_fc_norm else nn.Identity()
        self.pooler = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.Tanh()) if cfg.pooler else None
        self.head_drop = Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        # one entry per block: its output is a (dim, H/p, W/p) map (zoo/features.py)
        self.feature_info = block_feature_info(cfg.depth, cfg.dim, cfg.patch_size, "encoder.blocks")
        self.init_weights()

    def _pos_slots(self) -> int:
        """Prefix tokens that get a position: all of them, or none with no_embed_class."""
        return 0 if self.config.no_embed_class else self.num_prefix

    def init_weights(self):
        trunc_normal_init(self)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)

    @staticmethod
    def check_image_size(cfg: ViTConfig, h: int, w: int) -> None:
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by patch_size={cfg.patch_size}; "
                f"resize or pad the image to a multiple of {cfg.patch_size}"
            )

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "reg_token"}

    def adapt_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Weights of another image or patch size: their learned positions resampled to this model's grid (as timm's
        create_model(..., pretrained=True, img_size=...)); called by every zoo weights loader."""
        resample_pos_state(state_dict, prefix + "pos_embed", self.pos_embed, self._pos_slots(), self.grid)

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """The learned tokens before the patches, in order: [cls, reg_1..reg_R]."""
        return [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]

    def _pos_embed(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.config.pos_embed != "learn":  # sincos: on the patch tokens only (MAE's zero class row); rope, none: nothing
            if self.config.pos_embed == "sincos":
                tokens = tokens + self._sincos(grid).to(tokens.dtype)[None]
            return torch.cat(self._prefix_tokens(tokens.shape[0]) + [tokens], dim=1)
        pos = self.pos_embed[0]
        slots = self._pos_slots()
        prefix_pos, patch_pos = pos[:slots], pos[slots:]
        patch_pos = resize_pos_grid(patch_pos, self.grid, grid, antialias=self.config.pos_resize_antialias)  # other sizes
        prefix = self._prefix_tokens(tokens.shape[0])
        if self.config.no_embed_class:  # [prefix, patches + pos]
            return torch.cat(prefix + [tokens + patch_pos[None]], dim=1)
        return torch.cat(prefix + [tokens], dim=1) + torch.cat([prefix_pos, patch_pos])[None]

    def _sincos(self, grid: tuple[int, int]) -> torch.Tensor:
        """The fixed 2-D sin-cos table of the patch grid (the buffer at the configured grid, else computed)."""
        if tuple(grid) == self.grid:
            return self.pos_table
        return sincos_table_2d(grid, self.config.dim).to(self.pos_table.device)

    def _block_kwargs(self, grid: tuple[int, int], device) -> dict:
        """What every block gets besides the tokens: the rotary table of the grid with pos_embed='rope'."""
        if self.rope is None:
            return {}
        return {"rope": AxialRotaryTable(self.rope.table(grid, device), self.num_prefix)}  # prefix tokens not rotated

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images -> the tokens that enter the first block, and the patch grid (H/p, W/p)."""
        check_images(x, self.config.in_chans, self.config.patch_size)  # shape, channels first, float, patch multiple
        h, w = x.shape[-2:]
        grid = (h // self.config.patch_size, w // self.config.patch_size)
        return self.norm_pre(self.pos_drop(self._pos_embed(self.patch_embed(x), grid))), grid

    def _encode(self, x: torch.Tensor, last_queries: int | None = None) -> torch.Tensor:
        tokens, grid = self._embed(x)
        return self.encoder(tokens, last_queries=last_queries, **self._block_kwargs(grid, tokens.device))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, prefix + patches, dim)."""
        return self._encode(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, return_prefix_tokens: bool = False,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Outputs of the blocks in `indices` (None: all, n: the last n, a list: those, negative from the end),
        as timm: each map is a block's output without the prefix tokens, after the final norm if `norm`
        (Identity for fc_norm models), as (B, dim, H/p, W/p) for "NCHW" or (B, patches, dim) for "NLC";
        with `return_prefix_tokens` each entry is (map, prefix tokens (B, num_prefix, dim)).
        Returns (forward_features(x), maps), or the maps only with `intermediates_only`."""
        check_output_fmt(output_fmt)
        take, _ = feature_take_indices(len(self.encoder.blocks), indices)
        tokens, grid = self._embed(x)
        checkpoint = self.encoder.gradient_checkpointing and self.training
        tokens, maps = run_blocks(self.encoder.blocks, tokens, take, stop_early=stop_early, checkpoint=checkpoint,
                                  **self._block_kwargs(grid, tokens.device))
        maps = [self.encoder.norm(m) if norm else m for m in maps]
        maps = split_prefix_maps(maps, self.num_prefix, grid, output_fmt, return_prefix_tokens)
        return maps if intermediates_only else (self.encoder.norm(tokens), maps)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.config.pool == "token" else x[:, self.num_prefix:].mean(dim=1)
        x = self.fc_norm(x)
        pooler = getattr(self, "pooler", None)  # (families that borrow this method have none)
        x = self.head_drop(x if pooler is None else pooler(x))
        return x if pre_logits else self.head(x)

    def head_queries(self) -> int | None:
        """How many leading tokens `forward_head` reads: 1 (the class token) with pool='token', None (every
        token) with 'avg'. Subclasses whose head reads more prefix tokens say so."""
        return 1 if self.config.pool == "token" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """forward_head(forward_features(x)), but with a class-token head the last block computes the rows the
        head reads only (output projection and feed-forward on 1 token instead of 1 + patches): the same logits,
        about 1/depth less work, unless a hook or capture_attention watches that block (zoo.core.TransformerStack).
        forward_features and forward_intermediates keep every token."""
        return self.forward_head(self._encode(x, last_queries=self.head_queries()))

    def prune_intermediate_layers(self, indices: int | list[int] | None = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's backbone trim: drop the blocks after the last one `indices` takes (as forward_intermediates counts
        them; config.depth and feature_info follow), the final norm with `prune_norm`, and fc_norm and the classifier
        with `prune_head` (forward then returns the pooled features). Returns the absolute indices to pass to
        forward_intermediates."""
        take = prune_blocks(self.encoder.blocks, indices)
        self.config.depth = len(self.encoder.blocks)
        self.feature_info = self.feature_info[:self.config.depth]
        if prune_norm:
            self.encoder.norm = nn.Identity()
        if prune_head:
            self.fc_norm, self.pooler = nn.Identity(), None
            self.reset_classifier(0)
        return take

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise lr decay (`timm.optim.create_optimizer_v2(model, layer_decay=...)`):
        the embedding (patches, positions, prefix tokens, pre-norm) first, then one group per block, the final norm with
        the last block, and whatever is unmatched (fc_norm, heads) last. `coarse` changes nothing (as in timm's ViT)."""
        return dict(stem=r"^(?:cls_token|reg_token|dist_token|pos_embed|patch_embed|norm_pre)",
                    blocks=[(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))])

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new zero-initialised head for `num_classes` (0: none, forward returns the pooled features). global_pool
        (timm's second argument): None keeps the pooling, "token" / "avg" switch it (models with a `pool` field;
        the norms stay as they are, and config.fc_norm says which one the model has)."""
        if global_pool is not None:
            set_pool(self, global_pool)
        self.num_classes = num_classes
        self.config.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)


def set_pool(model: nn.Module, pool: str) -> None:
    """Switch the pooling of a ViT-like model whose config has a `pool` field ("token" or "avg"); a model without one
    pools by the mean ("avg") only. Keeps the model's norms: config.fc_norm records whether it has an fc_norm, so
    the config still builds this model."""
    cfg = model.config
    allowed = ("token", "avg") if hasattr(cfg, "pool") else ("avg",)
    if pool not in allowed:
        hint = " ('' = no pooling: forward_features(x) gives every token)" if pool == "" else ""
        raise ValueError(f"global_pool must be one of {', '.join(map(repr, allowed))} for {type(model).__name__}, got "
                         f"{pool!r}{hint}")
    if not hasattr(cfg, "pool"):
        return
    if pool == "token" and not getattr(cfg, "class_token", True):
        raise ValueError("global_pool='token' needs a class token; this model has none (class_token=False): use 'avg'")
    if hasattr(cfg, "fc_norm") and isinstance(getattr(model, "fc_norm", None), nn.Module):
        cfg.fc_norm = not isinstance(model.fc_norm, nn.Identity)
    cfg.pool = pool


_PAPER = "Dosovitskiy et al. 2020, An Image is Worth 16x16 Words (arXiv:2010.11929); sizes from DeiT, Touvron et al. 2021"
_PAPER_DEIT3 = "Touvron et al. 2022, DeiT III: Revenge of the ViT (arXiv:2204.07118)"
_PAPER_REG = ("Darcet et al. 2024, Vision Transformers Need Registers (arXiv:2309.16588); DINOv2, Oquab et al. 2023 "
              "(arXiv:2304.07193); QK-norm: Dehghani et al. 2023 (arXiv:2302.05442)")


def _register(name: str, description: str, family: str = "vit", paper: str = _PAPER, **kw):
    register_model(name, family, VisionTransformer, ViTConfig(**kw), paper, description)


_register("vit_tiny_patch16_224", "ViT-Ti/16 (DeiT-Ti), 224px", dim=192, depth=12, num_heads=3)
_register("vit_small_patch16_224", "ViT-S/16 (DeiT-S), 224px", dim=384, depth=12, num_heads=6)
_register("vit_base_patch16_224", "ViT-B/16, 224px", dim=768, depth=12, num_heads=12)
# Small-image variants for CPU training on the offline data sets.
_register("vit_mnist", "ViT for 28x28 grey digits (MNIST): conv stem to a 7x7 grid, mean pooling", img_size=28, patch_size=4,
          in_chans=1, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0, pool="avg", stem="conv")
_register("vit_mnist_patch4", "ViT for 28x28 grey digits with the plain linear patch embedding (patch 4)", img_size=28,
          patch_size=4, in_chans=1, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0)
_register("vit_digits", "ViT for scikit-learn's 8x8 digits: patch 2, a 4x4 grid", img_size=8, patch_size=2, in_chans=1,
          num_classes=10, dim=64, depth=4, num_heads=4, mlp_ratio=2.0, pool="avg")

# DeiT III: ViT with LayerScale (1e-6) and positions on the patch tokens only; no distillation token.
_DEIT3 = dict(family="deit3", paper=_PAPER_DEIT3, no_embed_class=True, layer_scale=1e-6)
_register("deit3_small_patch16_224", "DeiT III-S/16, 224px (LayerScale 1e-6, no_embed_class)", dim=384, depth=12, num_heads=6,
          **_DEIT3)
_register("deit3_base_patch16_224", "DeiT III-B/16, 224px (LayerScale 1e-6, no_embed_class)", dim=768, depth=12, num_heads=12,
          **_DEIT3)
_register("deit3_mnist", "DeiT III options on vit_mnist_patch4 (28x28 grey digits, patch 4): LayerScale 1e-6, no_embed_class",
          img_size=28, patch_size=4, in_chans=1, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0, **_DEIT3)
# Register tokens (DINOv2 with registers; timm's vit_small_patch14_reg4_dinov2: 518px, no head, LayerScale 1e-5).
_REG = dict(family="vit_reg", paper=_PAPER_REG)
_register("vit_small_patch14_reg4_dinov2", "ViT-S/14 with 4 register tokens (DINOv2-reg backbone), 518px, no classifier",
          img_size=518, patch_size=14, num_classes=0, dim=384, depth=12, num_heads=6, reg_tokens=4, no_embed_class=True,
          layer_scale=1e-5, **_REG)
_register("vit_mnist_reg4", "vit_mnist plus 4 register tokens and QK-norm (28x28 grey digits; compare with vit_mnist)",
          img_size=28, patch_size=4, in_chans=1, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0, pool="avg",
          stem="conv", reg_tokens=4, qk_norm=True, **_REG)
