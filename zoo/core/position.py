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


def sincos_table_2d(grid: tuple[int, int], dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos positions of a (gh, gw) patch grid (MAE, He et al. 2022), (gh·gw, dim) float32, row-major.

    With ω_k = base^(−k/(dim/4)), k < dim/4, the patch in row h, column w gets
    [sin(w·ω_k), cos(w·ω_k), sin(h·ω_k), cos(h·ω_k)] (column first, as the MAE code's h/w naming gives;
    equal to zoo.models.mae.sincos_2d_table without its class-token row). Computed in float64."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos positions need a dim divisible by 4, got {dim}")
    gh, gw = grid
    omega = base ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows = repeat(torch.arange(gh, dtype=torch.float64), "h -> (h w)", w=gw)[:, None] * omega
    cols = repeat(torch.arange(gw, dtype=torch.float64), "w -> (h w)", h=gh)[:, None] * omega
    return torch.cat([cols.sin(), cols.cos(), rows.sin(), rows.cos()], dim=1).float()


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
        rows = self.weight[offset: offset + length]
        # A view of a Parameter taken with grad disabled still says requires_grad=True but has no
        # grad_fn; tools that hook module outputs (FlopCounterMode, ModuleTracker) then fail under
        # no_grad / inference_mode. Detached, it is an ordinary constant (the same memory).
        return rows if torch.is_grad_enabled() else rows.detach()


def check_length(length: int, max_len: int, field: str = "max_len", name: str = "sequence") -> None:
    """Refuse `length` positions beyond a position table of `max_len` (`field`: the config field to raise)."""
    if length > max_len:
        raise ValueError(
            f"{name} of {length} positions exceeds the model's maximum of {max_len} ({field}); truncate the input "
            f"(tokenizer truncation=True, max_length={max_len}) or create the model with a larger {field}"
        )


def check_pad_token(pad_token_id: int, vocab_size: int) -> None:
    if not 0 <= pad_token_id < vocab_size:
        raise ValueError(f"pad_token_id={pad_token_id} is outside the vocabulary [0, {vocab_size}); "
                         "pass the tokenizer's pad_token_id and vocab_size")


# ----------------------------------------------------------------------------- input checks
# Every family validates its inputs at the model boundary with these. Shape and dtype checks are
# free; the data-dependent ones (id range, empty mask rows) cost one reduction and one host sync
# each and are skipped while compiling, exporting, tracing or on fake/meta tensors, so that
# torch.compile, torch.export and ONNX export see no data-dependent branch.

def can_inspect(t: torch.Tensor) -> bool:
    """True when the values of `t` may be read (eager mode, real data)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if t.device.type == "meta" or t.numel() == 0:
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - older torch
        return True
    return not is_fake(t)


def check_token_ids(ids, vocab_size: int, name: str = "input_ids") -> None:
    """Token ids must be an integer (batch, length) tensor with length >= 1 and ids in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids of shape (batch, length), got {type(ids).__name__}; "
                        "use torch.tensor(...) or the tokenizer's return_tensors='pt'")
    if ids.dim() != 2:
        hint = f"; for one sequence add the batch dimension: {name}.unsqueeze(0)" if ids.dim() == 1 else ""
        raise ValueError(f"{name} must be (batch, length), got shape {tuple(ids.shape)}{hint}")
    if ids.dtype not in (torch.long, torch.int):
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}; convert with {name}.long()")
    if not torch.jit.is_tracing() and ids.shape[1] == 0:
        raise ValueError(f"{name} has length 0 (shape {tuple(ids.shape)}); every sequence needs at least one token: "
                         "drop empty texts before tokenizing, or let the tokenizer add its special tokens")
    if not can_inspect(ids):
        return
    lo, hi = torch.stack([ids.min(), ids.max()]).tolist()
    if lo >= 0 and hi < vocab_size:
        return
    if lo < 0:
        fix = ("-100 is the loss-ignore label, not a token: build decoder inputs with zoo.generation.shift_right(labels, "
               "decoder_start_token_id, pad_token_id), which replaces it by the pad id" if lo == -100 else
               "token ids are never negative; check how the ids were built")
    else:
        fix = (f"the tokenizer and the model disagree: encode with the tokenizer the model was built for, or create "
               f"the model with vocab_size >= {hi + 1} (len(tokenizer))")
    raise ValueError(f"{name} holds ids outside [0, {vocab_size}) (min id {lo}, max id {hi}; the model's vocab_size is "
                     f"{vocab_size}); {fix}")


class _TiedLookup(torch.autograd.Function):
    """Rows of a table that the output layer shares, and the table as that layer multiplies with it (cast once to
    autocast's dtype), in one autograd node. Its backward starts the table's gradient from the output layer's
    (cast back) and adds the rows' gradients into it in place: no table-sized zero-filled gradient for the lookup,
    and no sum of two table-sized gradients (T5-small: 32128 x 512, 64 MB each)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype, padding_idx: int | None):
        ctx.save_for_backward(ids)
        ctx.weight_dtype, ctx.padding_idx = weight.dtype, padding_idx
        return F.embedding(ids, weight), weight.to(dtype)  # the weight itself when no cast: autograd views it

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rows: torch.Tensor, grad_head: torch.Tensor):
        (ids,) = ctx.saved_tensors
        grad = grad_head.to(ctx.weight_dtype, copy=True)  # a fresh tensor: the table's gradient, summed into in place
        if ctx.padding_idx is not None:  # nn.Embedding's rule: the padding row gets no gradient from the lookup
            grad_rows = grad_rows.masked_fill((ids == ctx.padding_idx)[:, None], 0)
        grad.index_add_(0, ids, grad_rows.to(grad.dtype))
        return grad, None, None, None


def _tied_weight(table: nn.Embedding, head: nn.Module | None) -> bool:
    """The output layer is a plain nn.Linear holding the table's own parameter (not quantized, pruned or
    re-parametrised), and the table is a plain lookup."""
    return (type(head) is nn.Linear and head.weight is table.weight and table.max_norm is None and not table.sparse
            and not table.scale_grad_by_freq)


def lookup(table: nn.Embedding, ids: torch.Tensor, head: nn.Module | None = None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of `ids` in `table`, and the weight the output layer `head` should multiply with (`F.linear(x,
    weight, head.bias)`) when it is tied to the table and the table trains, else None (call `head(x)`).

    Tied and training, both come from one autograd node (_TiedLookup): the weight cast once to autocast's dtype
    under autocast, and the table's gradient the output layer's one with the rows' gradients added in place
    instead of a table-sized zero-filled gradient for the lookup plus a sum of two table-sized gradients. Check
    the ids first (check_token_ids): the lookup itself raises an unreadable IndexError."""
    if head is None or torch.jit.is_tracing() or not (torch.is_grad_enabled() and table.weight.requires_grad
                                                       and _tied_weight(table, head)):
        return table(ids), None  # (a TorchScript trace cannot hold the Python autograd node)
    device, dtype = table.weight.device.type, table.weight.dtype
    if torch.is_autocast_enabled(device) and dtype == torch.float32:  # the only dtype autocast casts down
        dtype = torch.get_autocast_dtype(device)
    rows, weight = _TiedLookup.apply(table.weight, ids.reshape(-1), dtype, table.padding_idx)
    return rows.view(*ids.shape, -1), weight


def apply_head(head: nn.Module, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The output layer on x: `head(x)`, or with the tied weight that `lookup` returned."""
    return head(x) if weight is None else F.linear(x, weight, head.bias)


def embed_both(table: nn.Embedding, input_ids, decoder_input_ids, head: nn.Module | None = None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """An encoder-decoder's source and target ids looked up in one call of their shared table when training: the
    table's gradient is then one dense (vocab, dim) tensor instead of one per lookup, each zeroed and summed
    (T5-small's 32128 x 512: 64 MB each, 3% of a bf16 training step on a 2-core Xeon). The ids are checked first,
    so a bad id gets the readable error. `head`: the output layer, when the caller multiplies with it; the third
    value is then the weight to use when it is tied to the table (see `lookup`), else None (call `head(x)`).

    (None, None, None) when nothing would train the table, or the ids are not tensors: each stack then looks its
    ids up itself."""
    if not (torch.is_grad_enabled() and table.weight.requires_grad and isinstance(input_ids, torch.Tensor)
            and isinstance(decoder_input_ids, torch.Tensor)):
        return None, None, None
    check_token_ids(input_ids, table.num_embeddings, "input_ids")
    check_token_ids(decoder_input_ids, table.num_embeddings, "decoder_input_ids")
    rows, weight = lookup(table, torch.cat([input_ids.reshape(-1), decoder_input_ids.reshape(-1)]), head)
    n = input_ids.numel()
    return rows[:n].view(*input_ids.shape, -1), rows[n:].view(*decoder_input_ids.shape, -1), weight


def check_attention_mask(mask, ids, name: str = "attention_mask", ids_name: str = "input_ids",
                         length: int | None = None) -> None:
    """A (batch, length) 1 = token / 0 = padding mask matching `ids` (or (batch, `length`) when it
    also covers cached positions), with at least one token in every row."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 1 (token) and 0 (padding), got {type(mask).__name__}")
    expected = tuple(ids.shape) if length is None else (ids.shape[0], length)
    if not torch.jit.is_tracing() and tuple(mask.shape) != expected:  # TorchScript tracing: shapes are tensors
        what = f"{ids_name} has {tuple(ids.shape)}" if length is None else f"it must be {expected} (batch, past + new positions)"
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but {what}; they must match: pass the mask the "
                         f"tokenizer returned together with {ids_name} (1 = token, 0 = padding)")
    if not can_inspect(mask):
        return
    if mask.is_floating_point() and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must hold 1 (token) and 0 (padding), got other values (e.g. "
                         f"{mask[(mask != 0) & (mask != 1)][0].item()}); this looks like an additive mask: pass the "
                         "tokenizer's 0/1 attention_mask instead")
    empty = ~mask.bool().any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
        raise ValueError(f"{name} rows [{shown}] are all padding: row {rows[0]} has no token to attend to; every row "
                         "needs at least one 1: drop empty examples before batching, and check that the mask is not "
                         "inverted (1 = token, 0 = padding)")


def check_batch_sizes(**sizes: int) -> None:
    """Tensors that pair up row by row (source and target, memory and decoder ids) must have equal batch sizes."""
    values = list(sizes.values())  # ints, or symbolic sizes while exporting: compare, never hash
    if not torch.jit.is_tracing() and any(v != values[0] for v in values[1:]):
        listed = ", ".join(f"{k} has {v} rows" for k, v in sizes.items())
        raise ValueError(f"batch sizes disagree: {listed}; pass one target sequence per source sequence "
                         "(to score several targets per source, repeat the source with repeat_interleave)")


def require_decoder_input_ids(decoder_input_ids, model_name: str, start_id: int, pad_id: int) -> None:
    """An encoder-decoder forward needs the decoder's input; name how to build it."""
    if decoder_input_ids is None:
        raise TypeError(
            f"{model_name}.forward needs decoder_input_ids (batch, target length): for teacher forcing pass the "
            f"targets shifted right, zoo.generation.shift_right(labels, {start_id}, {pad_id}) (decoder_start_token_id, "
            "pad_token_id); to produce text call model.generate(...)"
        )


def check_decoder_inputs(decoder_input_ids, memory: torch.Tensor, vocab_size: int, memory_mask=None,
                         decoder_attention_mask=None, past: int = 0) -> None:
    """The decoder side of an encoder-decoder: ids in the target vocabulary, one row per memory row,
    masks of the right shapes (`past`: positions already in the KV cache, covered by the decoder mask)."""
    check_token_ids(decoder_input_ids, vocab_size, "decoder_input_ids")
    check_batch_sizes(memory=memory.shape[0], decoder_input_ids=decoder_input_ids.shape[0])
    if memory_mask is not None and not torch.jit.is_tracing() and tuple(memory_mask.shape) != tuple(memory.shape[:2]):
        raise ValueError(f"memory_mask (the source attention_mask) has shape {tuple(memory_mask.shape)} but the encoder "
                         f"output covers {tuple(memory.shape[:2])} (batch, source length); pass the attention_mask of "
                         "the input_ids that were encoded")
    check_attention_mask(decoder_attention_mask, decoder_input_ids, "decoder_attention_mask", "decoder_input_ids",
                         length=None if not past else past + decoder_input_ids.shape[1])


def check_images(x, in_chans: int, patch_size: int | None = None, name: str = "images") -> None:
    """Images must be a float (batch, in_chans, H, W) tensor; H and W multiples of patch_size."""
    if not isinstance(x, torch.Tensor):
        hint = "torch.from_numpy(x)" if type(x).__module__.startswith("numpy") else "torch.as_tensor(x)"
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {in_chans}, H, W), got {type(x).__name__}; "
                        f"convert with {hint}")
    shape = tuple(x.shape)
    to_float = (f"convert to float and normalise as in training ({name}.float() / 255, then the dataset's mean/std, "
                "e.g. torchvision.transforms.Normalize)")
    fixes = []
    if x.dim() == 3 and in_chans in (shape[0], shape[-1]):
        fixes.append(f"for one image add the batch dimension: {name}.unsqueeze(0)")
    elif x.dim() == 4 and shape[1] != in_chans and shape[-1] == in_chans:
        fixes.append(f"this looks channels-last (batch, H, W, C): convert with {name}.permute(0, 3, 1, 2)")
    elif x.dim() == 4 and shape[1] != in_chans:
        fixes.append(f"create the model with in_chans={shape[1]} for other channel counts"
                     + (f", or repeat grey images: {name}.expand(-1, 3, -1, -1)" if shape[1] == 1 and in_chans == 3 else ""))
    elif x.dim() != 4:
        fixes.append("pass a batch of images, channels first")
    if x.dim() != 4 or shape[1] != in_chans:
        if not x.is_floating_point():
            fixes.append(f"and its dtype is {x.dtype}: {to_float}")
        raise ValueError(f"expected {name} of shape (batch, {in_chans}, H, W), got {shape}; " + "; ".join(fixes))
    if not x.is_floating_point():
        raise TypeError(f"expected float {name}, got dtype {x.dtype}; {to_float}")
    if patch_size:
        h, w = shape[-2:]
        if h < patch_size or w < patch_size or h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by patch_size={patch_size}; resize or pad the image "
                             f"to a multiple of {patch_size} (at least {patch_size}x{patch_size})")


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


# Scaled RoPE (the rope_type values transformers' configs write): the keys each one reads besides rope_type.
# "linear" (position interpolation, Chen et al. 2023): every frequency / factor. "dynamic" (dynamic NTK): beyond
# original_max_position_embeddings the base grows with the sequence length seq_len of the call,
# base' = base·(factor·seq_len/original − (factor − 1))^(D/(D−2)); up to it, plain RoPE. "llama3" (Llama 3.1+):
# wavelengths above original/low_freq_factor are divided by factor, below original/high_freq_factor kept, and
# interpolated smoothly in between.
ROPE_SCALINGS = {
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_rope_scaling(scaling, field: str = "rope_scaling") -> dict | None:
    """A validated copy of a RoPE scaling declaration ({"rope_type": ..., plus the keys of ROPE_SCALINGS}), or None
    (plain RoPE). `field`: the config field named in the errors."""
    if scaling is None:
        return None
    example = "{'rope_type': 'linear', 'factor': 2.0}"
    if not isinstance(scaling, dict):
        raise ValueError(f"{field} must be a dict such as {example} or None (plain RoPE), got {scaling!r}")
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"{field}: rope_type {kind!r} is not supported; zoo's RoPE scales by "
                         f"{', '.join(map(repr, ROPE_SCALINGS))}, or {field}=None for plain RoPE")
    need = ROPE_SCALINGS[kind]
    missing, extra = [k for k in need if k not in scaling], sorted(set(scaling) - set(need) - {"rope_type"})
    if missing or extra:
        raise ValueError(f"{field} of rope_type {kind!r} takes the keys {', '.join(need)}; "
                         + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"))
    for key in need:
        value = scaling[key]
        whole = key == "original_max_position_embeddings"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
            raise ValueError(f"{field}: {key} must be a positive {'int' if whole else 'number'}, got {value!r}")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError(f"{field}: high_freq_factor ({scaling['high_freq_factor']}) must exceed low_freq_factor "
                         f"({scaling['low_freq_factor']})")
    return {"rope_type": kind, **{k: scaling[k] for k in need}}


def rope_inv_freq(head_dim: int, base: float, scaling: dict | None = None, seq_len: int | None = None,
                  device=None) -> torch.Tensor:
    """The D/2 rotation frequencies of RoPE, float32, rounded as transformers rounds them (its rope init
    functions): base^(-2i/D), then the `scaling` (see ROPE_SCALINGS; `seq_len`: the positions a "dynamic" call
    covers, offset + length)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    kind = scaling["rope_type"] if scaling else None
    if kind == "dynamic" and seq_len is not None and seq_len > scaling["original_max_position_embeddings"]:
        factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
        stretch = factor * torch.tensor(seq_len, device=device) / original - (factor - 1)  # float32, as transformers
        base = base * stretch ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** exponents)
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        between = (wavelength >= original / high) & (wavelength <= original / low)
        inv_freq = torch.where(between, blended, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) applied to (B, H, L, D) queries and keys.

    Rotates feature pairs (i, i + D/2) by angle pos * base^(-2i/D) (the GPT-NeoX/LLaMA layout),
    so q·k depends on positions only through their difference. `scaling`: a declared frequency scaling for
    long contexts, {"rope_type": "linear" | "dynamic" | "llama3", ...} (see ROPE_SCALINGS); None: plain RoPE.
    A "dynamic" one depends on how many positions a call covers (offset + length): each call uses the
    frequencies of its own length, and keys already in a KV cache keep the rotation they were cached with, as in
    transformers' generate.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_len: int = 4096, scaling: dict | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        self.head_dim, self.base, self.scaling = head_dim, base, check_rope_scaling(scaling)
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base, self.scaling), persistent=False)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = x.shape[-2]
        inv_freq = self.inv_freq.float()
        if self.scaling and self.scaling["rope_type"] == "dynamic":
            if offset + length > self.scaling["original_max_position_embeddings"]:
                inv_freq = rope_inv_freq(self.head_dim, self.base, self.scaling, offset + length, x.device)
        pos = torch.arange(offset, offset + length, device=x.device, dtype=torch.float32)
        # float32 tables even inside a float64 model (model.double() converts the buffer; transformers does the same)
        angles = repeat(torch.outer(pos, inv_freq), "l d -> l (two d)", two=2)
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


def resample_pos_state(state_dict: dict, key: str, own: torch.Tensor | None, num_prefix: int,
                       grid: tuple[int, int]) -> None:
    """Fit a stored table of learned absolute positions, (1, num_prefix + gh·gw, D), to a model built for another
    image or patch size (timm's checkpoint_filter_fn with resample_abs_pos_embed): the prefix rows (class / register
    tokens) are kept, the patch rows are resized bicubically (antialiased, as timm) from the stored grid, taken as
    square as timm does, to the model's `grid`. In place; a table that is not of that form is left for the strict
    load to report."""
    stored = state_dict.get(key)
    if stored is None or own is None or stored.shape == own.shape or stored.ndim != 3 or own.ndim != 3:
        return
    if stored.shape[0] != 1 or stored.shape[-1] != own.shape[-1]:
        return
    side = math.isqrt(max(stored.shape[1] - num_prefix, 0))
    if side == 0 or side * side != stored.shape[1] - num_prefix:
        return
    patches = resize_pos_grid(stored[0, num_prefix:], (side, side), tuple(grid), antialias=True)
    state_dict[key] = torch.cat([stored[0, :num_prefix], patches])[None]



class RotaryEmbedding2D(nn.Module):
    """2-D axial rotary position embedding of image tokens (EVA-02; Heo et al. 2024, RoPE-ViT), as timm's
    `RotaryEmbeddingCat` builds it, applied to (B, H, L, D) queries and keys.

    A patch at row y, column x of a (gh, gw) grid has coordinates (c0, c1) = (y, x) with indexing 'ij' or
    (x, y) with 'xy'. With `ref_grid` (Rh, Rw) they are rescaled to that reference grid: y' = y·Rh/gh,
    x' = x·Rw/gw (EVA-02's scheme for other resolutions). With nb = D/4 bands ω_k = T^(−k/nb) (T the
    temperature), the D/2 angles of a token are θ = [c0·ω_0 … c0·ω_{nb−1}, c1·ω_0 … c1·ω_{nb−1}], and channel
    pair (2i, 2i+1) of every head rotates by θ_i (interleaved layout):

        out_2i = x_2i·cos θ_i − x_2i+1·sin θ_i,     out_2i+1 = x_2i+1·cos θ_i + x_2i·sin θ_i

    so the first D/2 channels see c0 and the last D/2 see c1. Bands, coordinates, angles and sin/cos are
    float32 (also in a float64 model, as timm). The first `num_prefix` tokens (class / register tokens)
    are not rotated. One table serves every head and layer: a model builds it once per forward with
    `at(grid)` and passes it as the `rope=` of the blocks (`MultiHeadAttention` calls `rope(q, offset=0)`);
    calling the module itself uses the construction grid.
    """

    def __init__(self, head_dim: int, grid: tuple[int, int], temperature: float = 10000.0, indexing: str = "ij",
                 ref_grid: tuple[int, int] | None = None, num_prefix: int = 0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D rotary embeddings need head_dim divisible by 4 (two axes of rotated pairs), got "
                             f"{head_dim}; change dim or num_heads")
        if indexing not in ("ij", "xy"):
            raise ValueError(f"indexing must be 'ij' (first half of each head = row) or 'xy' (first half = column), "
                             f"got {indexing!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.head_dim, self.temperature, self.indexing, self.num_prefix = head_dim, float(temperature), indexing, num_prefix
        self.grid = tuple(grid)
        self.ref_grid = tuple(ref_grid) if ref_grid is not None else None

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, grid={self.grid}, temperature={self.temperature}, indexing={self.indexing!r}, "
                f"ref_grid={self.ref_grid}, num_prefix={self.num_prefix}")

    def bands(self, device=None) -> torch.Tensor:
        """ω_k = 1 / T^(k/nb), k = 0..nb−1, nb = head_dim/4 (float32)."""
        nb = self.head_dim // 4
        return 1.0 / (self.temperature ** (torch.arange(nb, device=device, dtype=torch.int64).float() / nb))

    def angles(self, grid: tuple[int, int] | None = None, device=None) -> torch.Tensor:
        """(gh·gw, head_dim/2) float32 angles, tokens in row-major order."""
        gh, gw = grid or self.grid
        ys = torch.arange(gh, device=device, dtype=torch.int64).float()
        xs = torch.arange(gw, device=device, dtype=torch.int64).float()
        if self.ref_grid is not None:
            ys, xs = ys / gh * self.ref_grid[0], xs / gw * self.ref_grid[1]
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        c0, c1 = (yy, xx) if self.indexing == "ij" else (xx, yy)
        bands = self.bands(device)
        return torch.cat([c0.reshape(-1, 1) * bands, c1.reshape(-1, 1) * bands], dim=-1)

    def table(self, grid: tuple[int, int] | None = None, device=None) -> torch.Tensor:
        """cat(sin, cos) in the interleaved layout, (gh·gw, 2·head_dim) float32: timm's `rope.pos_embed`."""
        angles = repeat(self.angles(grid, device), "n d -> n (d two)", two=2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def at(self, grid: tuple[int, int] | None = None, device=None) -> "AxialRotaryTable":
        """The rotation for one image grid, computed once and applied by every attention layer."""
        return AxialRotaryTable(self.table(grid, device), self.num_prefix)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.at(self.grid, x.device)(x, offset)


class AxialRotaryTable:
    """A precomputed 2-D rotary table (see `RotaryEmbedding2D`): call it on (B, H, prefix + N, D) queries or keys."""

    def __init__(self, table: torch.Tensor, num_prefix: int = 0):
        self.sin, self.cos = table.chunk(2, dim=-1)
        self.num_prefix = num_prefix

    def __call__(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if offset:
            raise ValueError(f"2-D rotary positions index a fixed image grid; a cache offset ({offset}) has no meaning "
                             "for them (use RotaryEmbedding for sequences)")
        npt, n = self.num_prefix, self.sin.shape[0]
        if not torch.jit.is_tracing() and x.shape[-2] != npt + n:
            raise ValueError(f"the rotary table covers {npt} prefix + {n} patch tokens but the attention got "
                             f"{x.shape[-2]} tokens; build the table with at(grid) for the input's patch grid")
        prefix, patches = x[..., :npt, :], x[..., npt:, :]
        pairs = rearrange(patches, "... (d two) -> ... d two", two=2)
        rotated = rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1), "... d two -> ... (d two)")
        patches = (patches * self.cos + rotated * self.sin).to(x.dtype)
        return torch.cat([prefix, patches], dim=-2) if npt else patches
