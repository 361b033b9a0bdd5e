"""Multi-head attention: the only attention in zoo. Every family builds on it.

Attention modules share a duck-typed recording protocol instead of a common base class:

    record_weights: bool                 # default False; True forces the math path
    last_weights: torch.Tensor | None    # (B, H, Lq, Lk) probabilities of the latest call, else None

`capture_attention(model)` switches every module that has `record_weights` on for a `with` block
and collects their maps by module name; a custom token mixer joins by declaring the two attributes.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import Dropout, dropout, make_norm
from .masks import causal_mask, combine_masks
from .position import RotaryEmbedding


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H·D), the heads side by side for the output projection.

    Under torch.export an explicit copy: the CPU's fused kernel lays its output out as (b, l, h, d), so export
    would record the merge as a view, and ONNX's decomposition of attention with a bias (T5's relative bias,
    Swin's window bias and shift mask) gives another layout, where that view fails. Eager and compiled
    runs keep the view."""
    if torch.compiler.is_exporting():
        return out.transpose(1, 2).clone(memory_format=torch.contiguous_format).flatten(2)
    return rearrange(out, "b h l d -> b l (h d)")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q kᵀ · scale + bias, masked) · v for (B, H, L, D) tensors.

    mask: boolean, True = allowed, broadcastable to (B, H, Lq, Lk).
    bias: additive float bias broadcastable to (B, H, Lq, Lk) (e.g. T5 relative positions).
    scale: None means 1/sqrt(head_dim); T5 passes 1.0.
    need_weights: use the plain math path and also return the (B, H, Lq, Lk) probabilities.
    """
    if causal:
        mask = combine_masks(mask, causal_mask(q.shape[-2], k.shape[-2], q.device))
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if need_weights:
        return _math_attention(q, k, v, mask, bias, scale, dropout_p)
    # SDPA's CPU kernels have no dropout: it runs its math path, whose dropout is ATen's slow CPU mask; the same
    # math with the core's faster one (zoo.core.layers.dropout). Under CPU autocast that path runs in bf16, its
    # softmax included (CPU autocast's float32 list has no softmax, unlike CUDA's): only the fused kernel is upcast,
    # for its slow bf16 backward (_upcast_for_backward); the bf16 recipes' accuracy was measured with this path
    math_path = dropout_p > 0 and q.device.type == "cpu"
    out_dtype = q.dtype
    upcast = _upcast_for_backward(q, k, v) and not (math_path and torch.is_autocast_enabled("cpu"))
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    # autocast would cast float32 inputs back down
    with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():
        if math_path:
            out = _math_attention(q, k, v, mask, bias, scale, dropout_p)[0]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(mask, bias, q.dtype),
                                                 dropout_p=dropout_p, scale=scale)
    return out.to(out_dtype), None


def _math_attention(q, k, v, mask, bias, scale: float, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention and its (B, H, Lq, Lk) probabilities, computed step by step."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    return torch.matmul(dropout(weights, dropout_p), v), weights


def _sdpa_mask(mask: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """SDPA takes one mask: the boolean mask folded into the additive bias."""
    if bias is None:
        return mask
    attn_mask = bias.to(dtype)
    if bias.dtype != dtype and bias.is_floating_point():  # e.g. fp32 bias under bf16 autocast: fp32's lowest
        attn_mask = attn_mask.clamp_min(torch.finfo(dtype).min)  # would become -inf (NaN on a fully masked row)
    if mask is not None:
        attn_mask = attn_mask.masked_fill(~mask, torch.finfo(dtype).min)
    return attn_mask


def _upcast_for_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether to run SDPA in float32 for bf16/fp16 inputs: on the CPU, the fused attention's backward in bf16
    is several times slower than in float32 (torch 2.14, one thread, (128, 4, 50, 32): forward + backward 97 ms
    against 23 ms), while the forward is as fast (5.2 against 6.0 ms). So a CPU training step under autocast computes
    attention in float32 (also the more accurate choice) and casts the output back; inference keeps bf16."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad))


def _first_rows(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """A (…, Lq, Lk) mask or bias for the first n queries (one that broadcasts over the queries stays as it is)."""
    return t if t is None or t.dim() < 2 or t.shape[-2] == 1 else t[..., :n, :]


class KVCache:
    """Keys and values of past positions, per layer, for incremental decoding.

    One object serves a whole model; each attention layer stores its tensors under its own key.
    Cross-attention keys/values are computed once from the encoder output and reused.
    """

    def __init__(self):
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def length(self, layer_id: int | None = None) -> int:
        if not self.store:
            return 0
        if layer_id is None:
            layer_id = next(iter(self.store))
        return self.store[layer_id][0].shape[-2] if layer_id in self.store else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search reorders hypotheses every step)."""
        self.store = {key: (k.index_select(0, index), v.index_select(0, index)) for key, (k, v) in self.store.items()}


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with fused or separate q/k/v projections.

    Head reshapes use einops: the projected features split as (heads, head_dim) with heads
    outermost, the convention of every reference implementation.

    qk_norm: a norm kind ("layernorm", "rmsnorm", ...) or None. When set, `q_norm` / `k_norm`
    normalise each head's query and key over head_dim (one affine of size head_dim shared by all
    heads; Dehghani et al. 2023, timm's qk_norm): q = q_norm(q), k = k_norm(k) right after the head
    split, before rotary positions and the 1/sqrt(head_dim) scale. None: both are Identity.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        fused_qkv: bool = True,
        cross: bool = False,
        context_dim: int | None = None,
        scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_kv_heads: int | None = None,
        qk_norm: str | None = None,
        qk_norm_eps: float = 1e-6,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}; grouped-query "
                             "attention shares each key/value head among num_heads // num_kv_heads query heads")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pass head_dim or change num_heads")
            head_dim = dim // num_heads
        inner, kv_inner = num_heads * head_dim, num_kv_heads * head_dim
        context_dim = context_dim or dim
        self.num_heads, self.head_dim, self.cross, self.scale = num_heads, head_dim, cross, scale
        self.num_kv_heads = num_kv_heads
        self.fused_qkv = fused_qkv and not cross and context_dim == dim
        if self.fused_qkv:  # rows q | k | v (k and v have num_kv_heads heads each)
            self.qkv = nn.Linear(dim, inner + 2 * kv_inner, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, inner, bias=qkv_bias)
            self.k = nn.Linear(context_dim, kv_inner, bias=qkv_bias)
            self.v = nn.Linear(context_dim, kv_inner, bias=qkv_bias)
        self.q_norm = make_norm(qk_norm, head_dim, qk_norm_eps) if qk_norm else nn.Identity()
        self.k_norm = make_norm(qk_norm, head_dim, qk_norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(inner, dim, bias=out_bias)
        self.attn_drop = attn_drop
        self.proj_drop = Dropout(proj_drop)
        self.layer_id = id(self)  # key into a shared KVCache
        self.record_weights = False
        self.last_weights: torch.Tensor | None = None

    def _project(self, x, context):
        if self.fused_qkv and self.num_kv_heads == self.num_heads:
            return rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.num_heads).unbind(0)
        split = lambda t, h: rearrange(t, "b l (h d) -> b h l d", h=h)  # noqa: E731
        kv = self.num_kv_heads
        if self.fused_qkv:
            q, k, v = self.qkv(x).split([self.num_heads * self.head_dim, kv * self.head_dim, kv * self.head_dim], dim=-1)
            return split(q, self.num_heads), split(k, kv), split(v, kv)
        src = x if context is None else context
        return split(self.q(x), self.num_heads), split(self.k(src), kv), split(self.v(src), kv)

    def _expand_kv(self, t: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention: key/value head j serves query heads j*g .. j*g+g-1 (g = heads // kv heads),
        as in transformers' repeat_kv. The cache keeps the num_kv_heads heads."""
        groups = self.num_heads // self.num_kv_heads
        return t if groups == 1 else t.repeat_interleave(groups, dim=1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        queries: int | None = None,
    ) -> torch.Tensor:
        """queries: compute the outputs of the first `queries` tokens of x only (B, queries, dim), attending to all
        of them: what a head that reads the class token needs from the last block (`TransformerStack(last_queries=)`)."""
        if self.cross and context is None:
            raise ValueError("cross-attention needs `context` (the encoder output)")
        if queries is not None and (causal or cache is not None):
            raise ValueError("queries= (the outputs of the first tokens only) is for bidirectional self-attention; "
                             "it cannot be combined with causal=True or a KVCache")
        if self.cross and cache is not None and self.layer_id in cache.store:
            # Encoder keys/values do not change while decoding: project them once.
            q = self.q_norm(rearrange(self.q(x), "b l (h d) -> b h l d", h=self.num_heads))
            k, v = cache.store[self.layer_id]
        else:
            q, k, v = self._project(x, context)
            q, k = self.q_norm(q), self.k_norm(k)
            past = 0 if (cache is None or self.cross) else cache.length(self.layer_id)
            if rope is not None:
                q, k = rope(q, offset=past), rope(k, offset=past)
            if cache is not None:
                if not self.cross and self.layer_id in cache.store:
                    pk, pv = cache.store[self.layer_id]
                    k, v = torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2)
                cache.store[self.layer_id] = (k, v)
        if queries is not None:
            q, mask, bias = q[:, :, :queries], _first_rows(mask, queries), _first_rows(bias, queries)
        out, weights = attention(
            q, self._expand_kv(k), self._expand_kv(v), mask=mask, bias=bias, causal=causal and not self.cross, scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0, need_weights=need_weights or self.record_weights,
        )
        self.last_weights = weights
        return self.proj_drop(self.proj(merge_heads(out)))


class AdditiveAttention(nn.Module):
    """Additive attention (Bahdanau et al. 2015): score(s, h_j) = vᵀ tanh(W s + U h_j), softmax over j.

    The recurrent encoder–decoders use it. `keys(memory)` projects the encoder states once (U h_j)
    so that each decoding step only projects its query. `forward` returns the context Σ_j α_j h_j
    (B, memory_dim) and the weights α (B, S). It follows the recording protocol: while
    `record_weights` is True, `last_weights` holds α of the latest call as (B, 1, 1, S) (one head,
    one query; a recurrent decoder calls it once per step)."""

    def __init__(self, query_dim: int, memory_dim: int, attn_dim: int):
        super().__init__()
        self.query = nn.Linear(query_dim, attn_dim, bias=False)
        self.key = nn.Linear(memory_dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1, bias=False)
        self.record_weights = False
        self.last_weights: torch.Tensor | None = None

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Dq), keys (B, S, A), memory (B, S, Dm), mask (B, S) with True/1 = attend."""
        scores = self.score(torch.tanh(keys + self.query(query)[:, None])).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        self.last_weights = rearrange(weights, "b s -> b 1 1 s") if self.record_weights else None
        return torch.einsum("bs,bsd->bd", weights, memory), weights


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the attention probabilities of every module of `model` that has `record_weights`.

        with capture_attention(model) as maps:
            model(x)
        maps["encoder.blocks.0.attn"]  # (B, H, Lq, Lk)

    `maps` fills as the modules run, in call order, with each module's latest map; modules that
    did not run are absent. The flags (and hence the fast SDPA path) are restored on exit.
    """
    recorders = [(name, m) for name, m in model.named_modules() if hasattr(m, "record_weights")]
    if not recorders:
        raise TypeError(f"{type(model).__name__} has no attention module with a `record_weights` attribute; "
                        "a custom token mixer joins capture_attention by declaring record_weights and last_weights")
    maps: dict[str, torch.Tensor] = {}

    def keeper(name):
        def hook(module, args, output):
            if module.last_weights is not None:
                maps[name] = module.last_weights
        return hook

    saved = [m.record_weights for _, m in recorders]
    handles = [m.register_forward_hook(keeper(name)) for name, m in recorders]
    for _, m in recorders:
        m.record_weights = True
    try:
        yield maps
    finally:
        for (_, m), flag, handle in zip(recorders, saved, handles):
            m.record_weights = flag
            handle.remove()
