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
# # Lesson 7 — The Hugging Face ecosystem: Tokenizers, Datasets, Transformers
#
# Three libraries carry most of today's transformer work, and zoo builds on them rather than beside
# them:
#
# * **Tokenizers** turns text into ids. Byte-pair encoding (BPE; Sennrich et al. 2016) starts from
#   single bytes and repeatedly merges the most frequent adjacent pair into a new token, until the
#   vocabulary has the size asked for; a word is then encoded by replaying the merges:
#
#     $$(a, b)^\star = \arg\max_{(a, b)} \#\{\text{occurrences of } a\,b \text{ in the corpus}\},
#     \qquad V \leftarrow V \cup \{ab\},\quad \text{repeat until } |V| = \text{vocab\_size}$$
#
#     WordPiece (BERT) and Unigram (T5, SentencePiece) are the other two kinds in zoo,
#     [`train_tokenizer`][zoo.data.tokenizers.train_tokenizer] (`zoo/data/tokenizers.py`).
#
# * **Datasets** stores examples as Arrow tables: memory-mapped, cached, and transformed with a
#   batched `Dataset.map`. zoo's data modules for your own files (`zoo.data.local`) read through it.
#
# * **Transformers** holds the reference implementations and the checkpoints of the Hub. zoo's
#   `from_hf` / `to_hf` convert in both directions, and the outputs agree to float32 rounding.
#
# Nothing in this lesson downloads anything: the tokenizer is trained here, the dataset is built in
# memory, and the transformers model is randomly initialised from a small config.

# %%
import tempfile

import _lesson
import matplotlib.pyplot as plt
import torch
from datasets import Dataset
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

import zoo
from zoo.data.numbers import render, split_numbers
from zoo.data.tokenizers import encode_batch, train_tokenizer

_lesson.setup()
numbers = split_numbers(9999, n_test=1000, n_val=500)
texts = [render(n, lang) for n in numbers["train"][:3000] for lang in ("en", "fr")]

# %% [markdown]
# ## Tokenizers: a byte-level BPE built by hand with the `tokenizers` library
#
# The same recipe zoo's helper follows for `kind="bpe"` (GPT-2's byte-level BPE): NFC normalisation,
# split on spaces with every byte in the initial alphabet (no unknown token, ever), the special
# tokens first, merges kept when a pair occurs at least twice.

# %%
specials = ["<pad>", "<s>", "</s>", "<unk>"]
bpe = Tokenizer(models.BPE(unk_token="<unk>"))
bpe.normalizer = normalizers.NFC()
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
    vocab_size=600, min_frequency=2, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False))

tok = train_tokenizer("bpe", texts, vocab_size=600)  # zoo's helper: a transformers PreTrainedTokenizerFast
sample = [render(n, lang) for n in numbers["test"][:50] for lang in ("en", "fr")]
for text in sample:
    assert bpe.encode(text).ids + [tok.eos_token_id] == tok(text)["input_ids"]  # zoo appends </s>
print(tok.convert_ids_to_tokens(tok("trois cent quatre-vingt-dix-sept")["input_ids"]))
assert tok.decode(tok(sample[1])["input_ids"], skip_special_tokens=True) == sample[1]  # lossless

# %% [markdown]
# ## Datasets: an Arrow table, tokenized with a batched `map`

# %%
table = Dataset.from_dict({"en": [render(n, "en") for n in numbers["val"]],
                           "fr": [render(n, "fr") for n in numbers["val"]]})
encoded = table.map(lambda rows: tok(rows["en"]), batched=True, remove_columns=["en", "fr"])
print(table, encoded, sep="\n")
first = encoded.with_format("torch")[:4]
padded = tok.pad({"input_ids": first["input_ids"]}, return_tensors="pt")
reference = encode_batch(tok, table["en"][:4])  # zoo's batch encoder: the same ids and mask
torch.testing.assert_close(padded["input_ids"], reference["input_ids"])
torch.testing.assert_close(padded["attention_mask"], reference["attention_mask"])

# %% [markdown]
# ## Transformers ↔ zoo
#
# A BERT masked-language model from a small `transformers` config, randomly initialised, converted
# with [`zoo.from_hf`][zoo.interop.hf.from_hf] and back with [`zoo.to_hf`][zoo.interop.hf.to_hf].
# (A checkpoint on disk converts the same way: `zoo.from_hf("./bert-sst2")`, or
# `zoo convert --from-hf ./bert-sst2 --out bert.safetensors`.)

# %%
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
hf_model = BertForMaskedLM(config).eval()
ours = zoo.from_hf(hf_model)
print(type(ours).__name__, ours.config.head, sum(p.numel() for p in ours.parameters()), "parameters")

batch = encode_batch(tok, sample[:6])
with torch.no_grad():
    hf_logits = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    zoo_logits = ours(batch["input_ids"], attention_mask=batch["attention_mask"])
scale = hf_logits.abs().max().item()
err = (zoo_logits - hf_logits).abs().max().item()
assert err <= 1e-4 * scale, err  # the project's parity tolerance
print(f"max |zoo - transformers| = {err:.2e} (output scale {scale:.2f})")

with tempfile.TemporaryDirectory() as out:
    zoo.to_hf(ours, out)
    back = AutoModelForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        back_logits = back(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
torch.testing.assert_close(back_logits, hf_logits, rtol=1e-4, atol=1e-4 * scale)
print("transformers -> zoo -> transformers: the same logits")

# %%
lengths = {lang: [len(tok(render(n, lang))["input_ids"]) - 1 for n in numbers["test"]] for lang in ("en", "fr", "de", "digits")}
median = {lang: sorted(v)[len(v) // 2] for lang, v in lengths.items()}
print("median tokens per test number:", median, "| 7342 in digits:", tok.tokenize(render(7342, "digits")))
assert median["de"] > 2 * max(median["en"], median["fr"])  # a language the BPE never saw: many small pieces
assert median["digits"] <= median["en"]  # never seen either, but short: a token per digit and per space
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
left.hist(list(lengths.values()), bins=range(1, max(max(v) for v in lengths.values()) + 2), label=list(lengths), histtype="step", linewidth=1.5)
left.set(xlabel="tokens per number (test numbers)", ylabel="count",
         title="BPE trained on English + French only")
left.legend()
right.scatter(hf_logits.flatten()[::7], zoo_logits.flatten()[::7], s=2)
right.set(xlabel="transformers BertForMaskedLM logit", ylabel="zoo.from_hf(...) logit",
          title=f"Same outputs: max |Δ| = {err:.1e}")
_lesson.save(fig, "lesson_07_hugging_face.png")

# %% [markdown]
# ![Token counts per language; transformers vs zoo logits](../figures/lesson_07_hugging_face.png)
#
# German was not in the tokenizer's training texts: its number words fall apart into pieces of one to
# three letters (mostly one), about three times as many tokens as in English (medians 27 and 9 here). Bare digits
# were not in them either, but they are short: one token per digit and one per space ("7 3 4 2" is
# seven tokens), no more than the words take. A tokenizer is part of the model; `zoo.get_tokenizer(tag)`
# returns the one shipped with a tag.
#
# ## What to try next
#
# * `train_tokenizer("wordpiece", texts, 600)` and `("unigram", ...)`: compare the pieces of
#   "quatre-vingt-dix-sept".
# * Your own files: `zoo fit ... --data zoo.data.local.LocalSeq2Seq --data.train_file pairs.jsonl`
#   reads them with `datasets` (see the how-to [Train a recipe on your own data](../howto/own_data.md)).
# * Convert T5, ViT, CLIP, GPT-2 and Llama the same way: [Convert from/to transformers and timm](../howto/convert.md).
#
# Next: [Lesson 8 — an end-to-end project](08_end_to_end.md).
