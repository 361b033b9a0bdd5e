# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Lesson 3 — Multi-head attention
#
# One attention computes one weighted mean per token: one kind of relation at a time. Multi-head
# attention runs $h$ attentions side by side on smaller projections, each free to look for something
# else (the previous word, the matching word in the other language, the end of the sentence), and
# mixes their outputs with one more linear map:
#
# $$\mathrm{MultiHead}(X) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W^O,\qquad
# \mathrm{head}_i = \mathrm{Attention}(X W_i^Q,\ X W_i^K,\ X W_i^V)$$
#
# with $W_i^Q, W_i^K, W_i^V \in \mathbb{R}^{d \times d_k}$, $d_k = d / h$ and $W^O \in \mathbb{R}^{d \times d}$.
# The cost is that of a single full-width attention: the $h$ heads of width $d/h$ are one $d \times 3d$
# projection, reshaped. In code the split is a reshape `(L, h·d_k) -> (h, L, d_k)`; zoo writes it with
# einops, `rearrange(t, "b l (h d) -> b h l d", h=heads)`.
#
# zoo's [`MultiHeadAttention`][zoo.core.attention.MultiHeadAttention] (in `zoo/core/attention.py`) holds
# the three projections in one fused `qkv` Linear whose output rows are `q | k | v`, heads outermost in
# each, the layout of every reference implementation. We take its weights apart by hand, recompute
# the layer and compare; then we look at the heads of a trained translator.

# %%
import _lesson
import matplotlib.pyplot as plt
import torch

import zoo
from zoo.core import MultiHeadAttention, capture_attention
from zoo.data.numbers import render

_lesson.setup()

# %% [markdown]
# ## Heads by hand, against zoo's `MultiHeadAttention`

# %%
dim, heads = 64, 4
layer = MultiHeadAttention(dim, heads).eval()
x = torch.randn(2, 10, dim)


def multi_head_by_hand(x: torch.Tensor, layer: MultiHeadAttention):
    """(B, L, d) -> output (B, L, d) and the per-head weights (B, h, L, L), with plain matmuls."""
    b, n, d = x.shape
    h, dk = layer.num_heads, layer.head_dim
    qkv = x @ layer.qkv.weight.T + layer.qkv.bias  # (B, L, 3d): rows q | k | v
    q, k, v = qkv.split(d, dim=-1)
    q, k, v = (t.reshape(b, n, h, dk).transpose(1, 2) for t in (q, k, v))  # (B, h, L, d_k): split the heads
    weights = (q @ k.transpose(-2, -1) / dk**0.5).softmax(dim=-1)
    heads_out = weights @ v  # (B, h, L, d_k)
    concat = heads_out.transpose(1, 2).reshape(b, n, d)  # Concat(head_1..head_h)
    return concat @ layer.proj.weight.T + layer.proj.bias, weights  # W^O


with torch.no_grad():
    ours, our_weights = multi_head_by_hand(x, layer)
    with capture_attention(layer) as maps:  # records every attention map of a module tree
        reference = layer(x)
torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(our_weights, maps[""], rtol=1e-5, atol=1e-6)
print("hand-written multi-head attention == zoo MultiHeadAttention (outputs and per-head weights)")

# %% [markdown]
# The parameter count does not depend on the number of heads: $4d^2 + 4d$ (three input projections
# and $W^O$, with biases), here the same for 1, 4 or 16 heads.

# %%
counts = {h: sum(p.numel() for p in MultiHeadAttention(dim, h).parameters()) for h in (1, 4, 16)}
assert set(counts.values()) == {4 * dim * dim + 4 * dim}
print("parameters per layer:", counts)

# %% [markdown]
# ## The heads of a trained translator
#
# `transformer_numbers.en_fr` is a small encoder–decoder trained on English → French number
# translation (the shipped weights, see [Pretrained weights](../howto/pretrained.md)). We record the
# self-attention of each of its four heads in the first encoder layer on one sentence.

# %%
TAG = "transformer_numbers.en_fr"
tok = zoo.get_tokenizer(TAG)
model = zoo.create_model(TAG, pretrained=True).eval()
sentence = render(7342, "en")  # "seven thousand, three hundred and forty-two"
ids = tok([sentence], return_tensors="pt")["input_ids"]
pieces = tok.convert_ids_to_tokens(ids[0])
with torch.no_grad(), capture_attention(model) as maps:
    model.encode(ids)
first = maps["encoder.blocks.0.attn"][0]  # (heads, L, L)
assert first.shape == (model.config.num_heads, len(pieces), len(pieces))
torch.testing.assert_close(first.sum(-1), torch.ones(first.shape[:2]))
# trained heads specialise: no two heads of the layer draw the same map (mean |difference| between heads)
gaps = [(first[i] - first[j]).abs().mean().item() for i in range(len(first)) for j in range(i + 1, len(first))]
print(f"smallest mean |difference| between two heads' maps: {min(gaps):.3f}")
assert min(gaps) > 0.01

# %%
fig, axes = plt.subplots(1, first.shape[0], figsize=(3.2 * first.shape[0], 3.6))
labels = [p.replace("Ġ", "_") for p in pieces]
for i, ax in enumerate(axes):
    ax.imshow(first[i], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels if i == 0 else [], fontsize=7)
    ax.set_title(f"head {i}")
fig.suptitle(f"{TAG}: encoder layer 0 self-attention, one map per head (rows: queries)")
_lesson.save(fig, "lesson_03_heads.png")

# %% [markdown]
# ![Per-head self-attention of the trained translator](../figures/lesson_03_heads.png)
#
# Different heads attend differently to the same sentence: that specialisation is what the
# multiple heads buy.
#
# ## What to try next
#
# * Grouped-query attention (Llama 2/3): `MultiHeadAttention(dim, 8, num_kv_heads=2)` shares each
#   key/value head among four query heads; count the parameters.
# * Head pruning: `zoo.compress.prune_heads(layer, [0, 1])` removes heads in place; `zoo compress
#   --prune-kind heads` does it for a whole checkpoint.
# * Look at deeper layers: `maps["encoder.blocks.1.attn"]`, or at the decoder's cross-attention
#   (lesson 6).
#
# Next: [Lesson 4 — the encoder–decoder](04_encoder_decoder.md).
