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
# # Lesson 4 — The encoder–decoder: masks, residuals, layer norm
#
# The Transformer of Vaswani et al. (2017) stacks two kinds of blocks.
#
# * An **encoder block**: self-attention over the source, then a position-wise feed-forward network
#   $\mathrm{FFN}(x) = \max(0, x W_1 + b_1) W_2 + b_2$.
# * A **decoder block**: *causal* self-attention over the target written so far, **cross-attention**
#   whose queries come from the decoder and whose keys and values are the encoder's output (the
#   *memory*), then the feed-forward network.
#
# Every sub-layer is wrapped in a **residual connection** and a **layer norm**. The 2017 paper
# normalises after the sum (post-norm); most later models normalise the sub-layer's input (pre-norm),
# which trains more stably in deep stacks:
#
# $$\text{post-norm: } x \leftarrow \mathrm{LN}(x + \mathrm{Sublayer}(x)) \qquad
#   \text{pre-norm: } x \leftarrow x + \mathrm{Sublayer}(\mathrm{LN}(x))$$
# $$\mathrm{LN}(x) = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,
#   \quad \mu, \sigma^2 \text{ the mean and variance over the features of one token}$$
#
# **Masks** say which keys a query may see; in zoo a boolean mask is `True` where attention is
# allowed, and a masked score is set to $-\infty$ before the softmax:
#
# * a **padding mask** hides the padding tokens that make the sentences of a batch equally long:
#   [`padding_mask`][zoo.core.masks.padding_mask] turns the tokenizer's `attention_mask` (1 = token,
#   0 = padding) into a `(B, 1, 1, L)` boolean;
# * a **causal mask** lets position $t$ see positions $\le t$ only, so that the decoder cannot read
#   the word it must predict: [`causal_mask`][zoo.core.masks.causal_mask];
# * both together: [`combine_masks`][zoo.core.masks.combine_masks] (a logical AND).
#
# zoo builds every family from one block, [`TransformerBlock`][zoo.core.blocks.TransformerBlock]
# (in `zoo/core/blocks.py`), configured by a [`BlockConfig`][zoo.core.blocks.BlockConfig]. Below we
# write a post-norm encoder block and decoder block by hand and check them against it.

# %%
import _lesson
import matplotlib.pyplot as plt
import torch

from zoo.core import (
    BlockConfig,
    TransformerBlock,
    causal_mask,
    combine_masks,
    padding_mask,
)

_lesson.setup()

# %% [markdown]
# ## The masks

# %%
attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # the second sentence has 2 pads
pad = padding_mask(attention_mask)  # (B, 1, 1, L)
causal = causal_mask(6, 6)  # (1, 1, L, L)
both = combine_masks(pad, causal)  # (B, 1, L, L)
hand_causal = torch.ones(6, 6).tril().bool()  # position t sees 0..t
torch.testing.assert_close(causal[0, 0], hand_causal)
torch.testing.assert_close(both[1, 0], hand_causal & attention_mask[1].bool()[None, :])
print(both[1, 0].int())

# %% [markdown]
# ## Layer norm, attention with a mask, the feed-forward network — by hand

# %%
def layer_norm(x, norm):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return norm.weight * (x - mu) / torch.sqrt(var + norm.eps) + norm.bias


def attend(x, context, attn, allowed=None):
    """Multi-head attention (lesson 3) with a boolean mask; self-attention when context is x."""
    b, n, d = x.shape
    h = attn.num_heads
    if attn.fused_qkv:
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)
    else:  # cross-attention: queries from x, keys and values from the memory
        q, k, v = attn.q(x), attn.k(context), attn.v(context)
    split = lambda t: t.reshape(b, t.shape[1], h, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))  # a hidden key gets weight exactly 0
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


def ffn(x, mlp):
    return torch.relu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias


def encoder_block(x, blk, allowed):
    x = layer_norm(x + attend(x, x, blk.attn, allowed), blk.norm1)  # post-norm: LN(x + Sublayer(x))
    return layer_norm(x + ffn(x, blk.mlp), blk.norm2)


def decoder_block(y, memory, blk, self_allowed, memory_allowed):
    y = layer_norm(y + attend(y, y, blk.attn, self_allowed), blk.norm1)  # causal self-attention
    y = layer_norm(y + attend(y, memory, blk.cross_attn, memory_allowed), blk.norm_cross)  # cross-attention
    return layer_norm(y + ffn(y, blk.mlp), blk.norm2)


# %% [markdown]
# ## Against zoo's `TransformerBlock`
#
# The vanilla Transformer's settings: post-norm (`norm_first=False`), ReLU feed-forward,
# LayerNorm $\epsilon = 10^{-5}$.

# %%
cfg = BlockConfig(dim=32, num_heads=4, mlp_hidden=64, norm_first=False, activation="relu", norm_eps=1e-5)
enc_block = TransformerBlock(cfg).eval()
dec_block = TransformerBlock(cfg, cross_attention=True).eval()
src = torch.randn(2, 6, 32)
tgt = torch.randn(2, 5, 32)
with torch.no_grad():
    memory = enc_block(src, mask=pad)
    torch.testing.assert_close(encoder_block(src, enc_block, pad), memory, rtol=1e-5, atol=1e-5)
    out = dec_block(tgt, causal=True, context=memory, context_mask=pad)
    hand = decoder_block(tgt, memory, dec_block, causal_mask(5, 5), pad)
    torch.testing.assert_close(hand, out, rtol=1e-5, atol=1e-5)
print("hand-written encoder and decoder blocks == zoo TransformerBlock (post-norm)")

# %% [markdown]
# What the masks guarantee, checked on zoo's blocks:
#
# * changing a *future* target token leaves the decoder's outputs at earlier positions unchanged;
# * changing what sits under the *padding* leaves every output of the real tokens unchanged.

# %%
with torch.no_grad():
    changed = tgt.clone()
    changed[:, 3:] = torch.randn(2, 2, 32)  # rewrite positions 3 and 4
    out2 = dec_block(changed, causal=True, context=memory, context_mask=pad)
    torch.testing.assert_close(out2[:, :3], out[:, :3])  # positions 0..2 never saw 3 and 4
    assert not torch.allclose(out2[:, 3:], out[:, 3:])
    noisy = src.clone()
    noisy[1, 4:] = 100 * torch.randn(2, 32)  # garbage under the padding of sentence 1
    torch.testing.assert_close(enc_block(noisy, mask=pad)[1, :4], memory[1, :4], rtol=1e-5, atol=1e-5)
print("causal: the past never sees the future; padding: real tokens never see the pads")

# %% [markdown]
# Why the norm matters: through a stack of residual blocks *without* normalisation the activations
# grow with depth; post-norm resets every token to mean 0 and variance 1 after each sub-layer.

# %%
depth = 12
pre = TransformerBlock(BlockConfig(dim=32, num_heads=4, mlp_hidden=64)).eval()
scale_plain, scale_post = [], []
with torch.no_grad():
    x_plain = x_post = torch.randn(1, 6, 32)
    for _ in range(depth):
        x_plain = x_plain + attend(x_plain, x_plain, pre.attn) + ffn(x_plain, pre.mlp)
        x_post = encoder_block(x_post, enc_block, None)
        scale_plain.append(x_plain.std().item())
        scale_post.append(x_post.std().item())
assert scale_plain[-1] > 2 * scale_plain[0] and abs(scale_post[-1] - 1) < 0.1

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
panels = [(pad[:, 0, 0].expand(2, 6).int(), "padding mask, batch of 2\n(rows: sentences)"),
          (causal[0, 0].int(), "causal mask\n(rows: queries)"),
          (both[1, 0].int(), "causal AND padding,\nsentence 2")]
for ax, (m, title) in zip(axes, panels):
    ax.imshow(m, cmap="Greens", vmin=0, vmax=1)
    ax.set(title=title, xlabel="key position")
    for (i, j), val in zip(torch.cartesian_prod(torch.arange(m.shape[0]), torch.arange(m.shape[1])).tolist(), m.flatten()):
        ax.text(j, i, int(val), ha="center", va="center", fontsize=8, color="white" if val else "black")
axes[3].plot(range(1, depth + 1), scale_plain, marker="o", label="x + attn(x) + ffn(x), no norm")
axes[3].plot(range(1, depth + 1), scale_post, marker="o", label="post-norm block")
axes[3].set(xlabel="block", ylabel="std of activations", title="Residual stack with and without LN")
axes[3].legend(fontsize=8)
_lesson.save(fig, "lesson_04_masks.png")

# %% [markdown]
# ![Padding and causal masks; activations with and without layer norm](../figures/lesson_04_masks.png)
#
# ## What to try next
#
# * Switch the block to pre-norm (`BlockConfig(norm_first=True)`) and rewrite `encoder_block`
#   accordingly: $x + \mathrm{Sublayer}(\mathrm{LN}(x))$, with a final norm after the stack
#   ([`TransformerStack`][zoo.core.blocks.TransformerStack] adds it).
# * Decoder-only models (GPT, `zoo/models/gpt.py`) are the decoder block without cross-attention;
#   left-padded batches use [`decoder_padding_mask`][zoo.core.masks.decoder_padding_mask].
# * Try `BlockConfig(norm="rmsnorm")`: T5's and Llama's norm, no mean and no bias (lesson 10).
#
# Next: [Lesson 5 — positional encodings](05_positional_encoding.md).
