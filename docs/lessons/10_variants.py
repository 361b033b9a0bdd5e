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
# # Lesson 10 — The variants: ViT, T5, BERT, CLIP, Swin, CaiT, EVA
#
# The block of lesson 4 with the attention of lessons 2–3 and a position scheme from lesson 5 is
# every model in zoo; a *variant* changes what the tokens are, which mask is used, which norm and
# position, and what the training objective asks.
#
# | variant | tokens | attention | objective |
# |---|---|---|---|
# | **BERT** (Devlin et al. 2019) | word pieces + learned positions + segment | bidirectional encoder | predict masked tokens (MLM) |
# | **T5** (Raffel et al. 2020) | SentencePiece | encoder–decoder, RMSNorm, relative bias, no $1/\sqrt{d_k}$ | every task as text → text, named by a prefix |
# | **ViT** (Dosovitskiy et al. 2020) | 16×16 image patches + class token | bidirectional encoder | classify the image |
# | **CLIP** (Radford et al. 2021) | an image tower and a text tower | two encoders | match images with their captions (contrastive) |
# | **Swin** (Liu et al. 2021) | patches, merged stage by stage | inside shifted windows | classify |
# | **CaiT** (Touvron et al. 2021) | patches; class token added late | talking heads, then class attention | classify |
# | **EVA-02** (Fang et al. 2023) | patches | 2-D RoPE, SwiGLU | classify / MIM features |
#
# Four of them, checked by hand against zoo: the **attention rollout** of the shipped MNIST ViT, the
# **T5** attention score, the **BERT** embeddings, and the **CLIP** similarity of the shipped
# `clip_mnist`.

# %%

import _lesson
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import zoo
from zoo.core import capture_attention, relative_position_bucket
from zoo.data.multimodal import HELD_OUT_TEMPLATES, class_prompts
from zoo.data.tokenizers import encode_batch
from zoo.viz import (
    attention_rollout,
    clip_similarity,
    mnist_test_images,
    vit_attentions,
)

_lesson.setup()
images, digits = mnist_test_images(per_class=1)  # one held-out test image per digit, normalised

# %% [markdown]
# ## ViT: attention rollout
#
# Which pixels does the class decision come from? The attention of one layer mixes tokens, and the
# residual connection keeps a copy of each token; attention rollout (Abnar & Zuidema 2020) follows
# both through the stack: with $\bar A_\ell$ the head-averaged attention of layer $\ell$,
#
# $$\tilde A_\ell = \mathrm{normalise\_rows}(\bar A_\ell + I),\qquad
#   R = \tilde A_L\, \tilde A_{L-1} \cdots \tilde A_1$$
#
# and row $i$ of $R$ says how much each input token contributes to token $i$ at the top.
# [`attention_rollout`][zoo.viz.attention_rollout].

# %%
vit = zoo.create_model("vit_mnist.mnist5k", pretrained=True).eval()
layers = vit_attentions(vit, images)  # one (B, heads, N, N) map per block
rollout = None
for a in layers:
    a = a.mean(1) + torch.eye(a.shape[-1])
    a = a / a.sum(-1, keepdim=True)
    rollout = a if rollout is None else a @ rollout
torch.testing.assert_close(rollout, attention_rollout(layers))
prefix, grid = vit.num_prefix, vit.grid
# vit_mnist pools the mean of the patch tokens: average the rollout rows of the patches
heat = rollout[:, prefix:, prefix:].mean(1).reshape(-1, *grid)
with torch.no_grad():
    predicted = vit(images).argmax(-1)
print("rollout by hand == zoo.viz.attention_rollout; predictions:", predicted.tolist(), "truth:", digits.tolist())
assert (predicted == digits).float().mean().item() >= 0.8  # the trained ViT reads these test digits

# %% [markdown]
# ## T5: relative bias instead of scaling
#
# T5's attention score is $s_{ij} = q_i \cdot k_j + b_h(\mathrm{bucket}(j - i))$ — no division by
# $\sqrt{d_k}$ (the initialisation absorbs it) — after an RMSNorm, $\mathrm{RMS}(x) = w \odot x /
# \sqrt{\overline{x^2} + \epsilon}$: no mean, no bias. One bias table serves every layer of a stack.

# %%
t5 = zoo.create_model("t5_tiny").eval()
ids = torch.randint(2, 8000, (1, 12))
with torch.no_grad(), capture_attention(t5) as maps:
    t5.encode(ids)
    blk = t5.encoder.blocks[0]
    x = t5.shared(ids)
    h = blk.norm1.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + blk.norm1.eps)  # RMSNorm
    heads = t5.config.num_heads
    q = blk.attn.q(h).view(1, 12, heads, -1).transpose(1, 2)
    k = blk.attn.k(h).view(1, 12, heads, -1).transpose(1, 2)
    # b_h(bucket(j - i)): the key's offset from the query, bucketed (lesson 5), one learned scalar per bucket and head
    table = t5.encoder_rel_bias
    offsets = torch.arange(12)[None, :] - torch.arange(12)[:, None]  # (query i, key j) -> j - i
    buckets = relative_position_bucket(offsets, bidirectional=True, num_buckets=table.num_buckets,
                                       max_distance=table.max_distance)
    bias = table.embedding.weight[buckets].permute(2, 0, 1)  # (heads, L, L)
    t5_weights = (q @ k.transpose(-2, -1) + bias).softmax(-1)
torch.testing.assert_close(t5_weights, maps["encoder.blocks.0.attn"], rtol=1e-4, atol=1e-5)
print("T5 attention by hand (RMSNorm, relative bias, no scaling) == zoo t5_tiny")

# %% [markdown]
# In T5 every task is text in, text out: the recipe `configs/t5_numbers.yaml` trains one model on
# "translate English to French: …", "digits to German: …" and "words to digits: …".
#
# ## BERT: the embeddings
#
# BERT's input is the sum of three learned embeddings, word + segment + position, then LayerNorm:

# %%
bert = zoo.create_model("bert_tiny", vocab_size=1000).eval()
ids = torch.randint(5, 1000, (2, 9))
types = torch.tensor([[0] * 5 + [1] * 4] * 2)  # sentence A, then sentence B
emb = bert.embeddings
with torch.no_grad():
    summed = emb.word_embeddings(ids) + emb.token_type_embeddings(types) + emb.position_embeddings.weight[:9]
    torch.testing.assert_close(F.layer_norm(summed, (summed.shape[-1],), emb.norm.weight, emb.norm.bias, emb.norm.eps),
                               emb(ids, types), rtol=1e-5, atol=1e-5)
print("BERT embeddings by hand == zoo bert_tiny; MLM logits:", tuple(bert(ids).shape))

# %% [markdown]
# ## CLIP: similarity of images and texts
#
# CLIP embeds an image and a text into the same space and scores them by cosine similarity times a
# learned temperature, $\mathrm{logit}_{ij} = e^{t} \cdot \frac{f(x_i)}{\|f(x_i)\|} \cdot
# \frac{g(y_j)}{\|g(y_j)\|}$; training pulls the matching pairs of a batch together (a cross-entropy
# over each row and each column). A class is then recognised *zero-shot*, by the prompt it matches
# best. The shipped `clip_mnist` was trained on MNIST digits with captions in four languages; the
# prompts below use wordings it never saw.

# %%
TAG = "clip_mnist.mnist5k"
tok = zoo.get_tokenizer(TAG)
clip = zoo.create_model(TAG, pretrained=True).eval()
prompts = class_prompts({"en": HELD_OUT_TEMPLATES["en"][:1]}, ("en",))  # "a picture of the number zero", ...
text = encode_batch(tok, prompts)
sim = clip_similarity(clip, images, text["input_ids"], text["attention_mask"])
with torch.no_grad():
    img = F.normalize(clip.encode_image(images, normalize=False), dim=-1)
    txt = F.normalize(clip.encode_text(text["input_ids"], text["attention_mask"], normalize=False), dim=-1)
    by_hand = clip.logit_scale.exp().clamp(max=100) * img @ txt.T
torch.testing.assert_close(by_hand, sim, rtol=1e-4, atol=1e-4)
zero_shot = (sim.argmax(-1) == digits).float().mean().item()
print(f"CLIP similarity by hand == zoo.viz.clip_similarity; zero-shot on these 10 images: {zero_shot:.0%}")
many, many_digits = mnist_test_images(per_class=20)  # 200 held-out test digits
sim_many = clip_similarity(clip, many, text["input_ids"], text["attention_mask"])
zero_shot_200 = (sim_many.argmax(-1) == many_digits).float().mean().item()
print(f"zero-shot accuracy on {len(many)} test digits with a held-out prompt: {zero_shot_200:.1%}")
assert zero_shot_200 > 0.85

# %% [markdown]
# ## Swin, CaiT, EVA: the newer vision variants, by name
#
# Each is one file in `zoo/models/` and one new token mixer in the core: window attention with a
# shifted-window mask ([`WindowAttention`][zoo.core.window.WindowAttention]), talking heads
# ([`TalkingHeadsAttention`][zoo.core.talking_heads.TalkingHeadsAttention]) and 2-D rotary positions
# ([`RotaryEmbedding2D`][zoo.core.position.RotaryEmbedding2D]). Their published sizes: `zoo.model_info`
# counts the parameters on PyTorch's `meta` device (shapes only, no memory), and we count timm's models of
# the same names the same way (timm builds them from its own code; nothing is downloaded):

# %%
import timm

for name in ("vit_small_patch16_224", "swin_tiny_patch4_window7_224", "cait_xxs24_224", "eva02_tiny_patch14_224"):
    info = zoo.model_info(name)
    with torch.device("meta"):
        timm_params = sum(p.numel() for p in timm.create_model(name).parameters())
    print(f"{name:32s} {info['params'] / 1e6:6.1f}M (timm {timm_params / 1e6:.1f}M)  {info['description'][:60]}")
    assert info["params"] == timm_params, (name, info["params"], timm_params)

# %%
fig = plt.figure(figsize=(15, 5.2))
for i in range(10):
    ax = fig.add_subplot(2, 10, i + 1)
    ax.imshow(images[i, 0], cmap="gray")
    ax.set_title(f"pred {int(predicted[i])}", fontsize=8)
    ax.axis("off")
    ax = fig.add_subplot(2, 10, i + 11)
    up = F.interpolate(heat[i][None, None], size=images.shape[-2:], mode="bilinear")[0, 0]
    ax.imshow(images[i, 0], cmap="gray")
    ax.imshow(up, cmap="inferno", alpha=0.6)
    ax.axis("off")
fig.suptitle(f"vit_mnist.mnist5k: test digits (top) and attention rollout over {len(layers)} layers (bottom)")
_lesson.save(fig, "lesson_10_vit_rollout.png")

fig, ax = plt.subplots(figsize=(7, 5.5))
image = ax.imshow(sim, cmap="viridis")
ax.set_xticks(range(10), [p.replace("a picture of the number ", "") for p in prompts], rotation=45)
ax.set_yticks(range(10), [f"image of a {int(d)}" for d in digits])
ax.set(xlabel='prompt "a picture of the number …" (held out)', title=f"{TAG}: scaled cosine similarity")
fig.colorbar(image, ax=ax)
_lesson.save(fig, "lesson_10_clip_similarity.png")

# %% [markdown]
# ![Attention rollout of the MNIST ViT](../figures/lesson_10_vit_rollout.png)
#
# ![CLIP similarity of test digits and held-out prompts](../figures/lesson_10_clip_similarity.png)
#
# ## What to try next
#
# * Compare variants on the same data: `zoo fit --config configs/swin_mnist.yaml` (or `cait_mnist.yaml`,
#   `eva02_mnist.yaml`) against `configs/vit_mnist.yaml`; see [Compare variants](../howto/compare.md).
# * `zoo viz attention --ckpt vit_mnist.mnist5k` and `zoo viz clip-similarity --ckpt clip_mnist.mnist5k`
#   draw these figures for any checkpoint (a tag, a run folder or a `.ckpt`).
# * Train T5 on the text-to-text mix: `zoo fit --config configs/t5_numbers.yaml`; BERT from masked-LM
#   pre-training to a classifier: `configs/bert_mlm.yaml`, then `configs/bert_pairs.yaml`.
#
# That is the road: from a recurrent state to attention, heads, blocks, positions, a trained
# translator, the ecosystem, a deployed model, a compressed one and the family of variants.
# Back to the [lessons](index.md).
