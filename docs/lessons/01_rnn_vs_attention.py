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
# # Lesson 1 — Why attention: the limits of RNN, LSTM and GRU
#
# A recurrent network reads a sequence one token at a time. Its state after token $t$ is a function
# of the previous state and the token:
#
# $$h_t = \tanh(W_{hh}\, h_{t-1} + W_{xh}\, x_t + b)$$
#
# Two consequences follow from that one line.
#
# * **Sequential cost.** $h_t$ needs $h_{t-1}$, so the $L$ steps of a sequence run one after the
#   other: $O(L)$ sequential operations, whatever hardware you have. Self-attention computes all
#   positions at once (a few matrix products), at the price of $O(L^2)$ work.
# * **Vanishing memory.** How much $h_L$ still depends on $x_t$ is the product of $L - t$ Jacobians
#   $\partial h_{s}/\partial h_{s-1}$. When their norms are below one, the gradient shrinks
#   exponentially with the distance, and the network cannot learn to use what it read long ago.
#   The LSTM (Hochreiter & Schmidhuber 1997) and the GRU (Cho et al. 2014) add *gates* and an
#   additive path so that information can pass many steps unchanged; this helps, but the path from
#   $x_t$ to $h_L$ is still $L - t$ steps long.
#
# The GRU, written out (PyTorch's convention, gates $r$, $z$ and candidate $n$):
#
# $$r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}),\quad
#   z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz})$$
# $$n_t = \tanh\big(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})\big),\quad
#   h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}$$
#
# In self-attention every output position looks at every input position directly: the path
# between any two tokens is one step long. Bahdanau et al. (2015) first added attention *on top of*
# a recurrent encoder–decoder (zoo's `gru_seq2seq` / `lstm_seq2seq`, the baselines of this
# project); Vaswani et al. (2017) removed the recurrence altogether.
#
# Below we write the GRU recurrence by hand, check it against the encoder of zoo's `gru_seq2seq`,
# then measure both consequences: time against sequence length, and how the gradient of the last
# output reaches back to each input.

# %%
import time

import _lesson
import matplotlib.pyplot as plt
import torch

import zoo
from zoo.core import MultiHeadAttention

_lesson.setup()

# %% [markdown]
# ## The GRU by hand, against zoo's recurrent baseline
#
# `gru_seq2seq` encodes the source with a bidirectional `torch.nn.GRU`. Its forward direction is
# the recurrence above; we run it step by step with the model's own weights.

# %%
model = zoo.create_model("gru_seq2seq", vocab_size=100, embed_dim=16, hidden_size=32).eval()
gru = model.encoder  # nn.GRU(16, 32, bidirectional=True, batch_first=True)


def gru_by_hand(x: torch.Tensor, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """x (B, L, D) -> all states (B, L, H), one step at a time."""
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    states = []
    for t in range(x.shape[1]):
        gi = x[:, t] @ w_ih.T + b_ih  # input part of the r, z, n pre-activations
        gh = h @ w_hh.T + b_hh  # recurrent part
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        states.append(h)
    return torch.stack(states, dim=1)


x = torch.randn(2, 12, 16)
with torch.no_grad():
    reference, _ = gru(x)  # (B, L, 2H): forward states | backward states
    ours = gru_by_hand(x, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
torch.testing.assert_close(ours, reference[..., :32], rtol=1e-5, atol=1e-5)
print("hand-written GRU == zoo gru_seq2seq encoder (forward direction)")

# %% [markdown]
# ## Cost against sequence length
#
# We time one forward pass of an LSTM and of one multi-head self-attention layer from zoo's core
# (`zoo.core.MultiHeadAttention`, lesson 3) on the same input, for growing lengths. The LSTM does
# $L$ small steps in sequence; attention does a few large matrix products.

# %%
dim, batch = 64, 8
lstm = torch.nn.LSTM(dim, dim, batch_first=True).eval()
attn = MultiHeadAttention(dim, num_heads=4).eval()


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


lengths = [16, 64, 256, 1024]
cost = {"LSTM": [], "self-attention": []}
with torch.inference_mode():
    for length in lengths:
        seq = torch.randn(batch, length, dim)
        cost["LSTM"].append(best_of(lambda seq=seq: lstm(seq)))
        cost["self-attention"].append(best_of(lambda seq=seq: attn(seq)))
for name, ms in cost.items():
    print(name, " ".join(f"L={n}: {t:.1f} ms" for n, t in zip(lengths, ms)))

# %% [markdown]
# ## How far back does the gradient reach?
#
# The norm of $\partial y_L / \partial x_t$ for every input position $t$, where $y_L$ is the last
# output: through an untrained RNN, LSTM and GRU, and through one self-attention layer.

# %%
length = 64
seq = torch.randn(1, length, dim, requires_grad=True)


def sensitivity(layer) -> torch.Tensor:
    seq.grad = None
    out = layer(seq)
    out = out[0] if isinstance(out, tuple) else out
    out[0, -1].sum().backward()
    return seq.grad[0].norm(dim=-1)


reach = {
    "RNN (tanh)": sensitivity(torch.nn.RNN(dim, dim, batch_first=True)),
    "LSTM": sensitivity(torch.nn.LSTM(dim, dim, batch_first=True)),
    "GRU": sensitivity(torch.nn.GRU(dim, dim, batch_first=True)),
    "self-attention": sensitivity(attn),
}
for name, g in reach.items():
    print(f"{name:15s} |dy_L/dx_0| / |dy_L/dx_L-1| = {float(g[0] / g[-1]):.2e}")
# the recurrent layers forget the start of the sequence; attention does not
assert all(float(reach[name][0] / reach[name][-1]) < 1e-3 for name in ("RNN (tanh)", "LSTM", "GRU"))
assert float(reach["self-attention"][0] / reach["self-attention"][-1]) > 1e-2

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name, ms in cost.items():
    left.plot(lengths, ms, marker="o", label=name)
left.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="forward time (ms, CPU)",
         title=f"One layer, batch {batch}, width {dim}")
left.legend()
distance = torch.arange(length - 1, -1, -1)
for name, g in reach.items():
    right.semilogy(distance, (g / g[-1]).clamp_min(1e-30), label=name)
right.set(xlabel="distance L - 1 - t from the last position", ylabel="|dy_L / dx_t| (relative to t = L-1)",
          title="How far back the gradient reaches (untrained layers)")
right.legend()
_lesson.save(fig, "lesson_01_rnn_vs_attention.png")

# %% [markdown]
# ![RNN vs attention: cost and gradient reach](../figures/lesson_01_rnn_vs_attention.png)
#
# Left: measured here on one CPU thread. The LSTM's time grows linearly with $L$: $L$ small steps,
# each waiting for the previous one. Attention's grows with its $L^2$ work, and with no parallel
# hardware to spread it over (one thread) the long sequences cost it more than the LSTM; its
# advantage is that the work is a few large independent products, which a GPU or many cores run
# at once, while the LSTM's $L$ steps stay sequential on any hardware. (Quadratic cost is the
# price: the efficient-attention variants of later lessons attack it.)
# Right: through the recurrent layers the gradient from the last position fades exponentially with
# the distance; through self-attention every position is one step away.
#
# ## What to try next
#
# * Time the recurrent baseline against the Transformer of the same task at the sizes zoo registers:
#   `zoo bench speed gru_seq2seq transformer_numbers` (`zoo bench speed --help` lists the options).
# * Replace the tanh RNN by one initialised with an orthogonal $W_{hh}$ (`torch.nn.init.orthogonal_`)
#   and watch the right panel.
# * Read the additive attention that the recurrent decoders use:
#   [`AdditiveAttention`][zoo.core.attention.AdditiveAttention] in `zoo/core/attention.py`, and the
#   recurrent baselines in `zoo/models/recurrent.py`.
#
# Next: [Lesson 2 — self-attention](02_self_attention.md).
