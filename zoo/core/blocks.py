"""Transformer blocks and stacks, shared by every family.

A `BlockConfig` holds the choices that distinguish the families (norm placement and kind,
activation, biases, score scaling); families fill one in instead of passing dozens of flags.

Extension points (timm's `attn_layer` / `mlp_layer` / `block_fn`): a block builds its token mixer
with `attn_layer(cfg)` and its feed-forward with `mlp_layer(cfg)`. The mixer is called as
`attn(x, mask=, causal=, bias=, rope=, cache=, need_weights=)`; one that ignores some of these takes
**kwargs. Declaring `record_weights` / `last_weights` lets `capture_attention` see it.

Models declare their repeated unit in `no_split_modules` (HF's `_no_split_modules`): `find_blocks`
returns those modules (FSDP wraps each one) and `set_grad_checkpointing` flips every stack's switch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention
from .masks import fold_mask_into_bias
from .layers import DropPath, Dropout, FeedForward, LayerScale, make_norm
from .position import RotaryEmbedding


@dataclass
class BlockConfig:
    dim: int
    num_heads: int
    mlp_hidden: int
    head_dim: int | None = None  # None: dim // num_heads (T5 sets d_kv independently)
    num_kv_heads: int | None = None  # grouped-query attention (Llama 2/3); None: num_heads (multi-head)
    norm_first: bool = True  # pre-norm (ViT, T5, CLIP) vs post-norm (BERT, the 2017 paper)
    norm: str = "layernorm"  # or "rmsnorm" (T5), "rmsnorm_fp32" (Llama)
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
    layer_scale: float | None = None  # LayerScale γ init (CaiT, DeiT III, EVA); None: no LayerScale
    qk_norm: bool = False  # normalise q and k per head over head_dim with `norm` (attn.q_norm / attn.k_norm)


ModuleFactory = Callable[[BlockConfig], nn.Module]


def multi_head_attention(cfg: BlockConfig, cross: bool = False) -> MultiHeadAttention:
    """The default token mixer (and the cross-attention of decoder blocks)."""
    return MultiHeadAttention(cfg.dim, cfg.num_heads, head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
                              fused_qkv=cfg.fused_qkv, cross=cross, scale=cfg.attn_scale,
                              attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout, num_kv_heads=cfg.num_kv_heads,
                              qk_norm=cfg.norm if cfg.qk_norm else None, qk_norm_eps=cfg.norm_eps)


def feed_forward(cfg: BlockConfig) -> FeedForward:
    """The default channel mixer."""
    return FeedForward(cfg.dim, cfg.mlp_hidden, cfg.activation, cfg.gated, cfg.mlp_bias, cfg.mlp_dropout)


class TransformerBlock(nn.Module):
    """Self-attention [+ cross-attention] + feed-forward, each a residual sub-layer.

    pre-norm:  x = x + drop_path(ls(sub(norm(x))))   (ls: LayerScale when cfg.layer_scale is set, else identity)
    post-norm: x = norm(x + sub(x))

    attn_layer / mlp_layer: factories `(cfg) -> nn.Module` for the token mixer and the feed-forward
    (default: `multi_head_attention`, `feed_forward`); the cross-attention is always multi-head.
    """

    def __init__(self, cfg: BlockConfig, cross_attention: bool = False, drop_path: float = 0.0,
                 attn_layer: ModuleFactory | None = None, mlp_layer: ModuleFactory | None = None):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.norm1 = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.attn = (attn_layer or multi_head_attention)(cfg)
        self.cross_attn = None
        if cross_attention:
            self.norm_cross = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
            self.cross_attn = multi_head_attention(cfg, cross=True)
        self.norm2 = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.mlp = (mlp_layer or feed_forward)(cfg)
        self.mlp_drop = Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)
        if cfg.layer_scale is not None and not cfg.norm_first:
            raise ValueError("layer_scale needs a pre-norm block (norm_first=True)")
        scale = (lambda: LayerScale(cfg.dim, cfg.layer_scale)) if cfg.layer_scale is not None else nn.Identity
        self.ls1, self.ls2 = scale(), scale()
        self.ls_cross = scale() if cross_attention else None

    def _residual(self, x, norm, fn, ls, rows: int | None = None):
        """x + sub-layer; with `rows`, the sub-layer returns the first `rows` tokens only, and so does the sum."""
        res = x if rows is None else x[:, :rows]
        if self.norm_first:
            return res + self.drop_path(ls(fn(norm(x))))
        return norm(res + self.drop_path(fn(x)))

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
        queries: int | None = None,
    ) -> torch.Tensor:
        """queries: return the first `queries` tokens only (B, queries, dim), which still attend to every token; the
        rest of the block (output projection, feed-forward) runs on those rows alone. The token mixer must take
        `queries=` (the core's attention does)."""
        extra = {} if queries is None else {"queries": queries}
        x = self._residual(x, self.norm1, lambda h: self.attn(h, mask=mask, causal=causal, bias=bias, rope=rope, cache=cache,
                                                              need_weights=need_weights, **extra), self.ls1, queries)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(h, context=context, mask=context_mask, cache=cache,
                                                                             need_weights=need_weights), self.ls_cross)
        return self._residual(x, self.norm2, lambda h: self.mlp_drop(self.mlp(h)), self.ls2)


class TransformerStack(nn.Module):
    """`depth` blocks with linearly increasing stochastic depth and an optional final norm.

    block_fn builds each block as `block_fn(cfg, cross_attention, drop_path, attn_layer=, mlp_layer=)`."""

    def __init__(self, cfg: BlockConfig, depth: int, cross_attention: bool = False, drop_path: float = 0.0,
                 final_norm: bool = True, attn_layer: ModuleFactory | None = None, mlp_layer: ModuleFactory | None = None,
                 block_fn: Callable[..., nn.Module] = TransformerBlock):
        super().__init__()
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(block_fn(cfg, cross_attention, r, attn_layer=attn_layer, mlp_layer=mlp_layer) for r in rates)
        self.norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias) if final_norm else nn.Identity()
        self.gradient_checkpointing = False

    def _last_block_observed(self) -> bool:
        """Whether something expects every row of the last block: a forward hook on it, on a module inside it or on
        the final norm, or an attention module in it recording its maps (`capture_attention`)."""
        watched = [*self.blocks[-1].modules(), *self.norm.modules()] if len(self.blocks) else []
        return any(m._forward_hooks or m._forward_pre_hooks or getattr(m, "record_weights", False) for m in watched)

    def forward(self, x: torch.Tensor, last_queries: int | None = None, **kwargs) -> torch.Tensor:
        """last_queries: the last block may compute the first `last_queries` tokens only, and then the output is
        (B, last_queries, dim): for a head that reads the class token(s), the same numbers for less work. A hint,
        not a promise: when the last block is observed (a hook, recorded attention maps) every row is computed and
        returned, so a head indexes the rows it reads (x[:, 0]) rather than relying on the shape."""
        if last_queries is not None and self._last_block_observed():
            last_queries = None
        if kwargs.get("bias") is not None and (kwargs.get("mask") is not None or kwargs.get("causal")):
            # one additive mask for every layer's self-attention, built once here rather than in each layer
            kwargs = {**kwargs, "bias": fold_mask_into_bias(kwargs["bias"], kwargs.get("mask"), kwargs.get("causal", False)),
                      "mask": None, "causal": False}
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            kw = kwargs if i < last or last_queries is None else {**kwargs, "queries": last_queries}
            if self.gradient_checkpointing and self.training and kwargs.get("cache") is None:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kw)
            else:
                x = block(x, **kw)
        return self.norm(x)


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated units: every module whose class is in `model.no_split_modules`
    (default: zoo's TransformerBlock), in module order. FSDP shards each one separately."""
    types = getattr(model, "no_split_modules", (TransformerBlock,))
    if isinstance(types, type):
        types = (types,)
    if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError(f"{type(model).__name__}.no_split_modules must be a tuple of nn.Module classes, got {types!r}")
    return [m for m in model.modules() if isinstance(m, tuple(types))]


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> int:
    """Turn activation checkpointing on/off in every module with a boolean `gradient_checkpointing`
    switch (zoo's TransformerStack, or a custom stack that declares one); returns how many."""
    stacks = [m for m in model.modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no module with a `gradient_checkpointing` switch; build its blocks "
                         "with zoo.core.TransformerStack or give its stack a `gradient_checkpointing = False` attribute")
    for m in stacks:
        m.gradient_checkpointing = enable
    return len(stacks)
