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
# # Lesson 6 — A Transformer from scratch, trained on translation
#
# We now assemble the pieces of lessons 2–5 into the model of "Attention Is All You Need" and train
# it on a translation task that needs no download: English number phrases to French,
# "seven thousand three hundred and forty-two" → "sept mille trois cent quarante-deux"
# (generated with `num2words`; zoo's recipe `configs/transformer_numbers.yaml`).
#
# The model, end to end:
#
# $$\text{memory} = \mathrm{Encoder}\big(E[x]\sqrt{d} + PE\big),\qquad
#   p(y_t \mid y_{<t}, x) = \mathrm{softmax}\big(\mathrm{Decoder}(E[y_{<t}]\sqrt{d} + PE,\ \text{memory})\, E^\top\big)$$
#
# with one embedding table $E$ shared by the source, the target and the output layer (a shared
# vocabulary), post-norm blocks (lesson 4) and sinusoidal positions (lesson 5). Training is
# *teacher forcing*: the decoder reads the true target shifted right by one (a start token first)
# and every position is trained to predict the next token, with cross-entropy
# $\mathcal{L} = -\sum_t \log p(y_t \mid y_{<t}, x)$; the causal mask keeps position $t$ from
# reading $y_t$. At inference the decoder writes one token at a time (greedy decoding here).
#
# We write the model as a small `nn.Module` with its own parameters, train it for a few seconds,
# then load its weights into zoo's [`EncoderDecoderTransformer`][zoo.models.transformer.EncoderDecoderTransformer]
# (`zoo/models/transformer.py`) and check that both compute the same logits. Finally we look at the
# **cross-attention** of the fully trained translator that ships with zoo.

# %%
import time

import _lesson
import matplotlib.pyplot as plt
import torch
from torch import nn

import zoo
from zoo.core import sinusoidal_table
from zoo.data.numbers import render, split_numbers
from zoo.generation import shift_right
from zoo.viz import cross_attentions

_lesson.setup()
TAG = "transformer_numbers.en_fr"
tok = zoo.get_tokenizer(TAG)  # the BPE shipped beside the weights
PAD, BOS, EOS = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id

# %% [markdown]
# ## The model in plain torch

# %%
class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, context, allowed):
        b, n, d = x.shape
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(context)), split(self.v(context))
        scores = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Post-norm: x = LN(x + sublayer(x)) for self-attention, [cross-attention,] feed-forward."""

    def __init__(self, d: int, heads: int, ffn: int, cross: bool, dropout: float):
        super().__init__()
        self.self_attn, self.ln1 = Attention(d, heads), nn.LayerNorm(d)
        self.cross_attn, self.ln_cross = (Attention(d, heads), nn.LayerNorm(d)) if cross else (None, None)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Linear(ffn, d))
        self.ln2, self.drop = nn.LayerNorm(d), nn.Dropout(dropout)

    def forward(self, x, allowed, memory=None, memory_allowed=None):
        x = self.ln1(x + self.drop(self.self_attn(x, x, allowed)))
        if self.cross_attn is not None:
            x = self.ln_cross(x + self.drop(self.cross_attn(x, memory, memory_allowed)))
        return self.ln2(x + self.drop(self.ff(x)))


class Transformer(nn.Module):
    def __init__(self, vocab: int, d: int = 64, heads: int = 4, ffn: int = 128, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(vocab, d)  # shared: source, target and output layer
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        self.register_buffer("pe", sinusoidal_table(256, d), persistent=False)  # lesson 5
        self.encoder = nn.ModuleList(Block(d, heads, ffn, False, dropout) for _ in range(layers))
        self.decoder = nn.ModuleList(Block(d, heads, ffn, True, dropout) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def embed_tokens(self, ids):
        return self.drop(self.embed(ids) * self.d**0.5 + self.pe[: ids.shape[1]])

    def forward(self, src, tgt_in):
        src_ok = (src != PAD)[:, None, None, :]  # padding mask (B, 1, 1, S)
        causal = torch.ones(tgt_in.shape[1], tgt_in.shape[1], dtype=torch.bool).tril()
        memory = self.embed_tokens(src)
        for block in self.encoder:
            memory = block(memory, src_ok)
        y = self.embed_tokens(tgt_in)
        for block in self.decoder:
            y = block(y, causal & (tgt_in != PAD)[:, None, None, :], memory, src_ok)
        return y @ self.embed.weight.T  # tied output layer


# %% [markdown]
# ## The data: numbers as words, never a test number in training

# %%
numbers = split_numbers(9999, n_test=1000, n_val=500, always_train=100)  # the recipe's split (seed 0)


def batch_of(nums):
    src = tok([render(n, "en") for n in nums], padding=True, return_tensors="pt")["input_ids"]
    labels = tok([render(n, "fr") for n in nums], padding=True, return_tensors="pt")["input_ids"]
    labels = labels.masked_fill(labels == PAD, -100)  # padding is not a target
    return src, shift_right(labels, BOS, PAD), labels  # decoder input: <s> y_1 ... y_{T-1}


print(render(7342, "en"), "->", render(7342, "fr"))
print(tok.convert_ids_to_tokens(tok(render(7342, "fr"))["input_ids"]))

# %% [markdown]
# ## Training for a few seconds
#
# Adam with the paper's warm-up schedule, $\mathrm{lr} = d^{-0.5} \min(s^{-0.5}, s \cdot w^{-1.5})$,
# batches of 64 training numbers, a fixed budget of steps.

# %%
model = Transformer(len(tok))
optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
warmup = 40
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: model.d**-0.5 * min((s + 1) ** -0.5, (s + 1) * warmup**-1.5))
generator = torch.Generator().manual_seed(0)
train = torch.tensor(numbers["train"])
losses, start = [], time.perf_counter()
model.train()
for step in range(100):
    src, tgt_in, labels = batch_of(train[torch.randint(len(train), (64,), generator=generator)].tolist())
    loss = nn.functional.cross_entropy(model(src, tgt_in).flatten(0, 1), labels.flatten(), ignore_index=-100)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
print(f"100 steps in {time.perf_counter() - start:.1f} s: loss {losses[0]:.2f} -> {sum(losses[-10:]) / 10:.2f}")
assert sum(losses[-10:]) / 10 < 0.5 * losses[0]

# %% [markdown]
# ## The same network in zoo
#
# zoo's `transformer_numbers` architecture at our sizes; we copy our weights into it (the fused
# self-attention projection `qkv` holds the rows $q \mid k \mid v$) and compare the logits.

# %%
zoo_model = zoo.create_model("transformer_numbers", vocab_size=len(tok), d_model=64, num_heads=4, dim_feedforward=128,
                             num_encoder_layers=2, num_decoder_layers=2, pad_token_id=PAD, bos_token_id=BOS,
                             eos_token_id=EOS, decoder_start_token_id=BOS).eval()


def zoo_weights(ours: Transformer) -> dict:
    sd = {"src_embed.weight": ours.embed.weight}
    for side, blocks in (("encoder", ours.encoder), ("decoder", ours.decoder)):
        for i, b in enumerate(blocks):
            p = f"{side}.blocks.{i}."
            a = b.self_attn
            sd[p + "attn.qkv.weight"] = torch.cat([a.q.weight, a.k.weight, a.v.weight])
            sd[p + "attn.qkv.bias"] = torch.cat([a.q.bias, a.k.bias, a.v.bias])
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = a.o.weight, a.o.bias
            if b.cross_attn is not None:
                for name in "qkv":
                    sd[p + f"cross_attn.{name}.weight"] = getattr(b.cross_attn, name).weight
                    sd[p + f"cross_attn.{name}.bias"] = getattr(b.cross_attn, name).bias
                sd[p + "cross_attn.proj.weight"], sd[p + "cross_attn.proj.bias"] = b.cross_attn.o.weight, b.cross_attn.o.bias
                sd[p + "norm_cross.weight"], sd[p + "norm_cross.bias"] = b.ln_cross.weight, b.ln_cross.bias
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = b.ln1.weight, b.ln1.bias
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = b.ln2.weight, b.ln2.bias
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = b.ff[0].weight, b.ff[0].bias
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = b.ff[2].weight, b.ff[2].bias
    return sd


missing, unexpected = zoo_model.load_state_dict(zoo_weights(model), strict=False)
assert not unexpected and all(k in ("tgt_embed.weight", "lm_head.weight") for k in missing)  # tied to src_embed
model.eval()
src, tgt_in, _ = batch_of(numbers["test"][:8])
with torch.no_grad():
    torch.testing.assert_close(model(src, tgt_in), zoo_model(src, tgt_in, attention_mask=(src != PAD).long(),
                                                              decoder_attention_mask=(tgt_in != PAD).long()),
                               rtol=1e-4, atol=1e-4)
print("hand-written Transformer == zoo EncoderDecoderTransformer (same weights, same logits)")

# %% [markdown]
# ## Greedy decoding by hand, against `generate`
#
# Start from `<s>`, append the most probable next token, stop at `</s>`.

# %%
@torch.no_grad()
def greedy(net, src, max_new_tokens=24):
    out = torch.full((src.shape[0], 1), BOS)
    for _ in range(max_new_tokens):
        nxt = net(src, out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        if (out == EOS).any(dim=1).all():
            break
    return out


sentence = render(7342, "en")  # "seven thousand, three hundred and forty-two"
src = tok([sentence], return_tensors="pt")["input_ids"]
ours = greedy(model, src)
theirs = zoo_model.generate(src, max_new_tokens=24)
assert torch.equal(ours, theirs), (ours, theirs)  # the same tokens, and both stop at the same </s> (or after 24)
print("after a few seconds of training:", tok.decode(ours[0], skip_special_tokens=True))

# %% [markdown]
# ## The trained translator and its cross-attention
#
# A few seconds of training are far from enough. The shipped `transformer_numbers.en_fr` was trained
# with the recipe for 12 epochs (its card in [Model cards](../model_cards.md) gives the measured test
# exact match). Its cross-attention shows, for every French token it writes, which English tokens
# it reads.
# Eight numbers of the recipe's test split (never seen in training), greedy-decoded, must come
# out exactly as [`render`][zoo.data.numbers.render] (num2words) writes them in French.

# %%
translator = zoo.create_model(TAG, pretrained=True).eval()
out = translator.generate(src, max_new_tokens=24)
french = tok.decode(out[0], skip_special_tokens=True)
print(f"{sentence!r} -> {french!r} (num2words: {render(7342, 'fr')!r})")
# numbers the recipe held out (its test split), greedy-decoded: exactly num2words' French
held_out = numbers["test"][:8]
batch = tok([render(n, "en") for n in held_out], padding=True, return_tensors="pt")
with torch.no_grad():
    decoded = tok.batch_decode(translator.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                                   max_new_tokens=24), skip_special_tokens=True)
for n, fr in zip(held_out, decoded):
    print(f"  {n:5d}: {fr!r}")
assert [fr.strip() for fr in decoded] == [render(n, "fr") for n in held_out]
maps = cross_attentions(translator, src, out[:, :-1])  # one (B, heads, T, S) map per decoder layer
assert len(maps) == translator.config.num_decoder_layers
last = maps[-1][0].mean(0)  # average over heads: (T, S)
torch.testing.assert_close(last.sum(-1), torch.ones(last.shape[0]))

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.3]})
left.plot(losses)
left.set(xlabel="step", ylabel="cross-entropy", title="Our Transformer, 100 steps on one CPU thread")
src_labels = [p.replace("Ġ", "_") for p in tok.convert_ids_to_tokens(src[0])]
tgt_labels = [p.replace("Ġ", "_") for p in tok.convert_ids_to_tokens(out[0, 1:])]
right.imshow(last, cmap="viridis", aspect="auto")
right.set_xticks(range(len(src_labels)), src_labels, rotation=70, fontsize=8)
right.set_yticks(range(len(tgt_labels)), tgt_labels, fontsize=8)
right.set(xlabel="English (source) token", ylabel="French token written",
          title=f"{TAG}: last decoder layer's cross-attention (mean of heads)")
_lesson.save(fig, "lesson_06_translation.png")

# %% [markdown]
# ![Training loss and the cross-attention of the trained translator](../figures/lesson_06_translation.png)
#
# ## What to try next
#
# * Train the real thing: `zoo fit --config configs/transformer_numbers.yaml` (about 12 epochs), then
#   `zoo viz cross-attention --ckpt runs/transformer_numbers --text "three hundred and twelve"`.
# * Beam search: `translator.generate(src, num_beams=4)`; sampling: `do_sample=True, top_p=0.9`.
# * Pre-norm instead of post-norm: `zoo.create_model("transformer_numbers", norm_first=True)`.
#
# Next: [Lesson 7 — the Hugging Face ecosystem](07_hugging_face.md).
