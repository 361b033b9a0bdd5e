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
# # Lesson 5 — Positional encodings: sinusoidal, learned, T5 bias, RoPE
#
# Attention is permutation-equivariant (lesson 2): shuffle the tokens and the outputs shuffle the
# same way. Word order must be given to the model. Four ways are in zoo's core
# (`zoo/core/position.py`).
#
# **Sinusoidal** (Vaswani et al. 2017), added to the token embeddings:
#
# $$PE_{(pos,\,2i)} = \sin\!\left(\frac{pos}{10000^{2i/d_{model}}}\right),\qquad
#   PE_{(pos,\,2i+1)} = \cos\!\left(\frac{pos}{10000^{2i/d_{model}}}\right)$$
#
# Each pair of features is a clock turning at its own frequency, from one turn every $2\pi$ positions
# (the first pair) down to one every $2\pi \cdot 10000^{(d_{model}-2)/d_{model}}$ positions (the last pair:
# $2\pi \cdot 7499$ for the $d_{model} = 64$ below, tending to $2\pi \cdot 10000$ as $d_{model}$ grows).
# Because $\sin(a+b)$ and $\cos(a+b)$ are linear in $\sin a$ and $\cos a$, $PE_{pos+k}$ is a fixed rotation
# of $PE_{pos}$ for every $k$: relative offsets are easy for the model to read. [`sinusoidal_table`][zoo.core.position.sinusoidal_table].
#
# **Learned absolute** positions (BERT, GPT-2, ViT, CLIP): one trained vector per position,
# [`LearnedPositionalEmbedding`][zoo.core.position.LearnedPositionalEmbedding]; simple, but it knows no
# position beyond the table.
#
# **Relative bias** (T5, Raffel et al. 2020): no vector is added to the tokens; instead a learned
# scalar per head and per *bucket* of the offset $j - i$ is added to the attention scores,
# $s_{ij} = q_i \cdot k_j + b_{h}(\mathrm{bucket}(j - i))$. Small offsets get a bucket each, larger
# ones share logarithmically wider buckets up to `max_distance`.
# [`RelativePositionBias`][zoo.core.position.RelativePositionBias].
#
# **Rotary** (RoPE, Su et al. 2021; GPT-NeoX, Llama, EVA-02): rotate each query and key feature pair
# by an angle proportional to the position, $\theta_{m,i} = m \cdot 10000^{-2i/d}$:
#
# $$\mathrm{RoPE}(x, m)_{[i,\ i + d/2]} = \begin{pmatrix}\cos\theta_{m,i} & -\sin\theta_{m,i}\\
#   \sin\theta_{m,i} & \cos\theta_{m,i}\end{pmatrix} \begin{pmatrix}x_i\\ x_{i+d/2}\end{pmatrix}$$
#
# so that $\mathrm{RoPE}(q, m) \cdot \mathrm{RoPE}(k, n)$ depends on $m - n$ only.
# [`RotaryEmbedding`][zoo.core.position.RotaryEmbedding] (and its 2-D form for image grids,
# [`RotaryEmbedding2D`][zoo.core.position.RotaryEmbedding2D]).

# %%
import math

import _lesson
import matplotlib.pyplot as plt
import torch

from zoo.core import RotaryEmbedding, relative_position_bucket, sinusoidal_table

_lesson.setup()

# %% [markdown]
# ## Sinusoidal, by hand

# %%
length, d_model = 100, 64
pe = torch.zeros(length, d_model, dtype=torch.float64)
for pos in range(length):
    for i in range(d_model // 2):
        angle = pos / 10000 ** (2 * i / d_model)
        pe[pos, 2 * i] = math.sin(angle)
        pe[pos, 2 * i + 1] = math.cos(angle)
torch.testing.assert_close(pe.float(), sinusoidal_table(length, d_model), rtol=0, atol=1e-6)
print("hand-written PE == zoo.core.sinusoidal_table")

# %% [markdown]
# $PE_{pos+k} = M_k\, PE_{pos}$ with $M_k$ block-diagonal: one 2×2 rotation by $k \cdot 10000^{-2i/d}$ per pair.

# %%
k = 7
freqs = 10000 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
m_k = torch.zeros(d_model, d_model, dtype=torch.float64)
for i, w in enumerate(freqs):
    c, s = math.cos(k * w), math.sin(k * w)
    # (sin, cos)(a + b) = (sin a cos b + cos a sin b, cos a cos b - sin a sin b)
    m_k[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
torch.testing.assert_close(pe[:-k] @ m_k.T, pe[k:])
print(f"PE[pos + {k}] is a fixed linear map of PE[pos] for every pos")

# %% [markdown]
# ## T5's relative-position buckets, by hand

# %%
def t5_bucket(offset: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """Bidirectional: half the buckets for keys after the query, half for keys before it."""
    half = num_buckets // 2
    bucket = half if offset > 0 else 0
    distance = abs(offset)
    exact = half // 2
    if distance < exact:
        return bucket + distance
    log_bucket = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return bucket + min(log_bucket, half - 1)


offsets = torch.arange(-150, 151)
zoo_buckets = relative_position_bucket(offsets, bidirectional=True, num_buckets=32, max_distance=128)
assert zoo_buckets.tolist() == [t5_bucket(int(o)) for o in offsets]
print("hand-written buckets == zoo.core.relative_position_bucket")

# %% [markdown]
# ## RoPE, by hand

# %%
head_dim = 32


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (L, D): rotate the pairs (i, i + D/2) by positions * 10000^(-2i/D)."""
    half = x.shape[-1] // 2
    theta = positions[:, None].float() * 10000 ** (-torch.arange(half).float() * 2 / x.shape[-1])
    x1, x2 = x[:, :half], x[:, half:]
    return torch.cat([x1 * theta.cos() - x2 * theta.sin(), x2 * theta.cos() + x1 * theta.sin()], dim=-1)


rotary = RotaryEmbedding(head_dim)
x = torch.randn(1, 1, 20, head_dim)  # (B, heads, L, head_dim)
torch.testing.assert_close(rope(x[0, 0], torch.arange(20)), rotary(x)[0, 0], rtol=1e-5, atol=1e-5)
torch.testing.assert_close(rope(x[0, 0], torch.arange(3, 23)), rotary(x, offset=3)[0, 0], rtol=1e-5, atol=1e-5)
print("hand-written RoPE == zoo.core.RotaryEmbedding")

q, key = torch.randn(head_dim), torch.randn(head_dim)


def rope_score(m: int, n: int) -> float:
    return float(rope(q[None], torch.tensor([m]))[0] @ rope(key[None], torch.tensor([n]))[0])


assert abs(rope_score(10, 4) - rope_score(110, 104)) < 1e-3  # only m - n matters
relative = torch.arange(-60, 61)
rope_curve = [rope_score(60 + int(r), 60) for r in relative]

# %%
fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")
im = axes[0].imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set(xlabel="position", ylabel="feature", title=f"sinusoidal PE ({length} x {d_model})")
fig.colorbar(im, ax=axes[0], fraction=0.046)
sim = pe @ pe[50]
axes[1].plot(torch.arange(length) - 50, sim)
axes[1].set(xlabel="offset from position 50", ylabel="PE[pos] · PE[50]", title="Similarity falls with distance")
axes[2].step(offsets, zoo_buckets, where="mid")
axes[2].set(xlabel="key position - query position", ylabel="bucket", title="T5 relative-position buckets")
axes[3].plot(relative, rope_curve)
axes[3].set(xlabel="m - n", ylabel="RoPE(q, m) · RoPE(k, n)", title="RoPE: the score depends on m - n")
_lesson.save(fig, "lesson_05_positions.png")

# %% [markdown]
# ![Sinusoidal matrix, its similarity, T5 buckets and the RoPE score](../figures/lesson_05_positions.png)
#
# ## What to try next
#
# * `zoo viz positions --length 64 --dim 128` draws the sinusoidal matrix from the command line.
# * Compare the families: `zoo.model_info("bert_tiny")` (learned), `"t5_small"` (relative bias),
#   `"llama_tiny"` (RoPE), `"eva02_tiny_patch14_224"` (2-D RoPE), `"transformer_base"` (sinusoidal).
# * A ViT trained at 224 px runs at 384 px because its learned grid of positions is resized
#   bicubically ([`resize_pos_grid`][zoo.core.position.resize_pos_grid]); RoPE needs no resize.
#
# Next: [Lesson 6 — a Transformer from scratch, trained on translation](06_transformer_from_scratch.md).
