"""Attention masks.

Convention everywhere in zoo: a boolean mask is True where attention is ALLOWED
(the `transformers` convention, and what `scaled_dot_product_attention` expects).
User-facing padding masks are `attention_mask` with 1 = keep, 0 = pad.
"""
from __future__ import annotations

import torch
from einops import rearrange


def _traced() -> bool:
    """True while a graph is being captured (torch.compile / torch.export / the ONNX exporters, TorchScript):
    a value-dependent branch would then be baked into the graph for every later input."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, Lk) 1/0 keep-mask -> (B, 1, 1, Lk) boolean, broadcastable over heads and queries.

    In eager mode a mask that keeps every token is dropped (None): SDPA then runs its unmasked kernel, which
    on CPU is about 15% faster forward than the same kernel with an all-True mask (`transformers` does the
    same for its sdpa attention). While a graph is captured the mask is kept, so the graph serves padded batches."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, length) with 1 = keep, 0 = pad; got shape {tuple(attention_mask.shape)}")
    keep = attention_mask.bool()
    if not _traced() and keep.device.type != "meta" and bool(keep.all()):
        return None
    return rearrange(keep, "b k -> b 1 1 k")


def causal_mask(q_len: int, k_len: int, device=None) -> torch.Tensor:
    """(1, 1, Lq, Lk) boolean lower-triangular mask. Queries are the LAST q_len positions of
    the k_len keys, which is what incremental decoding with a cache needs."""
    offset = k_len - q_len
    q = torch.arange(q_len, device=device)[:, None] + offset
    k = torch.arange(k_len, device=device)[None, :]
    return rearrange(k <= q, "q k -> 1 1 q k")


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """AND together boolean masks (None means 'allow everything')."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else (out & m)
    return out


def fold_mask_into_bias(bias: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """An additive bias (B|1, H, Lq, Lk) with the boolean mask (and the causal mask) folded in: what SDPA takes as
    its one attn_mask. A stack does this once for all its layers (T5: the relative bias of every layer is the
    same) instead of once per layer; masked entries hold the dtype's lowest finite value."""
    if causal:
        mask = combine_masks(mask, causal_mask(bias.shape[-2], bias.shape[-1], bias.device))
    return bias if mask is None else bias.masked_fill(~mask, torch.finfo(bias.dtype).min)


def decoder_padding_mask(attention_mask: torch.Tensor | None, q_len: int) -> torch.Tensor | None:
    """Padding mask for a (left-)padded decoder-only batch: (B, Lk) 1/0 keep-mask over past + new
    tokens -> (B, 1, q_len, Lk) boolean for the last q_len positions (AND it with the causal mask).

    Real queries never see padded keys. Padded queries see every key: their outputs are never read,
    and a fully masked row would make SDPA return NaN, which leaks through zero weights (0 * NaN)."""
    keys = padding_mask(attention_mask)
    if keys is None:
        return None
    pad_query = rearrange(~attention_mask[:, -q_len:].bool(), "b q -> b 1 q 1")
    return keys | pad_query
