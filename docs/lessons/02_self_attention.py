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
# # Lesson 2 — Self-attention: queries, keys, values
#
# Each token of a sequence $X \in \mathbb{R}^{L \times d}$ asks a question (its **query**), offers a
# label (its **key**) and carries content (its **value**), all three linear maps of the token:
#
# $$Q = X W^Q,\qquad K = X W^K,\qquad V = X W^V$$
#
# Token $i$ scores every token $j$ by the dot product $q_i \cdot k_j$, turns the scores into
# weights with a softmax over $j$, and returns the weighted mean of the values:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_k}}\right) V,
# \qquad \mathrm{softmax}(s)_j = \frac{e^{s_j}}{\sum_{j'} e^{s_{j'}}}$$
#
# Why divide by $\sqrt{d_k}$? If the components of $q$ and $k$ are independent with mean 0 and
# variance 1, then $q \cdot k = \sum_{m=1}^{d_k} q_m k_m$ has variance $d_k$. Without the scaling the
# scores grow with the head size, the softmax saturates (one weight near 1, the rest near 0) and
# its gradient vanishes. Dividing by $\sqrt{d_k}$ brings the variance back to 1.
#
# In zoo every attention of every family goes through one function,
# [`zoo.core.attention`][zoo.core.attention.attention] (in `zoo/core/attention.py`), which calls
# PyTorch's fused `scaled_dot_product_attention` or, when the weights are asked for, computes the
# formula above step by step. We write the formula ourselves and check both paths.

# %%
import math

import _lesson
import matplotlib.pyplot as plt
import torch

from zoo.core import attention

_lesson.setup()

# %% [markdown]
# ## The formula in plain torch

# %%
def self_attention(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor):
    """x (L, d) -> (output (L, d_v), weights (L, L)), the formula line by line."""
    q, k, v = x @ w_q, x @ w_k, x @ w_v
    scores = q @ k.T / math.sqrt(k.shape[-1])  # (L, L): row i = how well query i matches each key
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)  # a stable softmax over keys
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v, weights


tokens = ["the", "cat", "sat", "on", "the", "mat", "because", "it", "was", "tired"]
d_model, d_k = 32, 16
embedding = {word: torch.randn(d_model) for word in sorted(set(tokens))}
x = torch.stack([embedding[w] for w in tokens])  # (L, d_model); "the" twice -> the same row twice
w_q, w_k, w_v = (torch.randn(d_model, d_k) / math.sqrt(d_model) for _ in range(3))
out, weights = self_attention(x, w_q, w_k, w_v)
assert torch.allclose(weights.sum(-1), torch.ones(len(tokens)))  # every row is a distribution

# %% [markdown]
# ## The same with zoo's core
#
# `attention(q, k, v)` takes `(batch, heads, length, head_dim)` tensors. With `need_weights=True` it
# also returns the `(batch, heads, Lq, Lk)` probabilities; without, it runs PyTorch's fused kernel.

# %%
q, k, v = (t[None, None] for t in (x @ w_q, x @ w_k, x @ w_v))  # one batch, one head
fused, _ = attention(q, k, v)
explicit, zoo_weights = attention(q, k, v, need_weights=True)
torch.testing.assert_close(fused[0, 0], out, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(explicit[0, 0], out, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(zoo_weights[0, 0], weights, rtol=1e-5, atol=1e-6)
print("hand-written attention == zoo.core.attention (fused and explicit paths)")

# %% [markdown]
# Two properties worth checking: identical tokens ("the" at positions 0 and 4) have identical
# queries, hence identical rows of weights; and attention has no notion of order — permuting the
# tokens permutes the output rows the same way (positions must be added: lesson 5).

# %%
torch.testing.assert_close(weights[0], weights[4])
perm = torch.randperm(len(tokens))
out_perm, _ = self_attention(x[perm], w_q, w_k, w_v)
torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-5)
print("permutation equivariant: attention(X[perm]) == attention(X)[perm]")

# %% [markdown]
# ## Why scale by $\sqrt{d_k}$
#
# For random unit-variance queries and keys we measure the variance of the raw scores and the mean
# largest softmax weight over 64 keys, with and without the scaling.

# %%
dims = [4, 16, 64, 256, 1024]
variance, top_raw, top_scaled = [], [], []
for d in dims:
    qs, ks = torch.randn(256, d), torch.randn(64, d)
    raw = qs @ ks.T
    variance.append(raw.var().item())
    top_raw.append(raw.softmax(-1).max(-1).values.mean().item())
    top_scaled.append((raw / math.sqrt(d)).softmax(-1).max(-1).values.mean().item())
    print(f"d_k={d:5d}: var(q.k)={variance[-1]:8.1f}  mean max weight raw={top_raw[-1]:.2f} scaled={top_scaled[-1]:.2f}")
assert abs(variance[-1] / dims[-1] - 1) < 0.2  # var(q . k) ~ d_k
assert top_raw[-1] > 0.9 and top_scaled[-1] < 0.5  # unscaled: saturated; scaled: spread out

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.1, 1]})
image = left.imshow(weights.detach(), cmap="viridis")
left.set_xticks(range(len(tokens)), tokens, rotation=60)
left.set_yticks(range(len(tokens)), tokens)
left.set(xlabel="key", ylabel="query", title="softmax(QKᵀ/√d_k), random projections")
fig.colorbar(image, ax=left, fraction=0.046)
right.semilogx(dims, top_raw, marker="o", label="softmax(QKᵀ)")
right.semilogx(dims, top_scaled, marker="o", label="softmax(QKᵀ/√d_k)")
right.axhline(1 / 64, color="gray", ls=":", label="uniform (1/64)")
right.set(xlabel="d_k", ylabel="mean largest weight (64 keys)", title="Without the scaling the softmax saturates")
right.legend()
_lesson.save(fig, "lesson_02_self_attention.png")

# %% [markdown]
# ![Attention weights and the effect of the scaling](../figures/lesson_02_self_attention.png)
#
# ## What to try next
#
# * Add a boolean `mask` or a float `bias` to `attention(...)` and see which weights change
#   (masks are lesson 4, the T5 bias lesson 5).
# * Make the weights sharper with a temperature: pass `scale=2 / math.sqrt(d_k)`.
# * Read [`attention`][zoo.core.attention.attention] in `zoo/core/attention.py`: the fused kernel takes one
#   mask, so when a float bias comes with a boolean mask the mask is folded into the bias first (`_sdpa_mask`),
#   the only subtle line; a boolean mask alone goes to the kernel as it is.
#
# Next: [Lesson 3 — multi-head attention](03_multi_head_attention.md).
