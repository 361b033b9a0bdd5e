"""Real English text that ships with Python: the help topics of `pydoc_data.topics` (the text of
`help("assert")`, `help("FORMATTING")`, ...; 79 topics, ~65k words of the language reference).

Paragraphs are re-joined (the source is wrapped at ~70 columns), split into sentences, and ruler
lines ("*****") dropped: about 4,000 sentences. `PydocMLM` holds out 5% for validation and 5% for
test (seed 0) and can mix in number phrases (zoo.data.numbers) so the same WordPiece tokenizer
serves the sentence-pair task that fine-tunes the pre-trained encoder: both modules train it on
the same texts (`numbers.tokenizer_corpus`), and training is deterministic. A fine-tuning run still
takes it from the pre-training checkpoint (`NumberComparison(tokenizer=<ckpt>)`), never rebuilds it.

`PydocLM` serves causal language modelling (GPT-2 / Llama, configs/gpt_pydoc.yaml): the 79 topics are
documents, split whole into train / val / test, with a byte-level BPE tokenizer trained on train.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

import torch

from .textdata import TextDataModule, pad

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


@lru_cache(maxsize=1)
def pydoc_sentences(min_words: int = 3) -> tuple[str, ...]:
    """Sentences of the standard library's help topics, in a fixed order."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(para.split())
            if not re.search(r"[A-Za-z]", text):  # rulers such as "*****"
                continue
            out += [s for s in _SENTENCE_END.split(text) if len(s.split()) >= min_words]
    return tuple(out)


def pydoc_lines() -> list[str]:
    return list(pydoc_sentences())


class PydocMLM(TextDataModule):
    """Masked-language-model pre-training text: pydoc sentences (+ number phrases with `with_numbers`).

    Splits: the distinct sentences shuffled with `split_seed`, 5% val, 5% test, none in two splits. Number phrases come from the
    training numbers of zoo.data.numbers (same max_number/split_seed), so no held-out number of
    the comparison task is seen in pre-training either.
    """

    tokenizer_kind = "wordpiece"

    def __init__(self, with_numbers: bool = True, languages: list[str] = ("en", "fr"), max_number: int = 9999,
                 n_test: int = 1000, n_val: int = 500, split_seed: int = 0, vocab_size: int = 4000, max_length: int = 64,
                 **kwargs):
        super().__init__(vocab_size=vocab_size, max_length=max_length, **kwargs)
        self.with_numbers, self.languages = with_numbers, list(languages)
        self.max_number, self.n_test, self.n_val, self.split_seed = max_number, n_test, n_val, split_seed

    def _number_splits(self):
        from .numbers import split_numbers

        return split_numbers(self.max_number, self.n_test, self.n_val, self.split_seed)

    def make_examples(self):
        from .numbers import render

        # each distinct sentence once: the help topics repeat many ("The following code:", 3,868 sentences of which
        # 3,098 distinct), and the copies fell into several splits (69 of the 193 validation sentences were training ones)
        sents = list(dict.fromkeys(pydoc_sentences()))
        random.Random(self.split_seed).shuffle(sents)
        k = max(1, len(sents) // 20)
        out = {"test": sents[:k], "val": sents[k:2 * k], "train": sents[2 * k:]}
        if self.with_numbers:
            nums = self._number_splits()
            for split in out:
                out[split] = out[split] + [render(n, lang) for n in nums[split] for lang in self.languages]
        return {split: [{"text": t} for t in texts] for split, texts in out.items()}

    def tokenizer_texts(self, train):
        from .numbers import tokenizer_corpus

        # the same call NumberComparison makes, so both build one tokenizer
        return tokenizer_corpus(self.languages, self._number_splits()["train"], with_corpus=True)

    @property
    def model_overrides(self) -> dict:
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "mask_token_id": tok.mask_token_id,
                "special_token_ids": sorted(tok.all_special_ids)}

    def encode(self, examples):
        ids = self.tokenizer([e["text"] for e in examples], truncation=True, max_length=self.max_length)["input_ids"]
        return [{"input_ids": i} for i in ids]

    def collate(self, rows):
        input_ids = pad([r["input_ids"] for r in rows], self.tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.tokenizer.pad_token_id).long()}

    def predict_examples(self, texts):
        return [{"text": t} for t in texts]


# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def pydoc_documents() -> tuple[tuple[str, str], ...]:
    """(topic, text) of every help topic, sorted by topic: the documents of the language-model corpus."""
    from pydoc_data.topics import topics

    return tuple((key, topics[key].strip()) for key in sorted(topics))


def split_documents(docs, fractions=(0.05, 0.05), seed: int = 0) -> dict[str, list]:
    """Shuffle whole documents (seed) and fill test, then val, until each holds its fraction of the
    characters; the rest is train. No document is split, so no held-out text is seen in training; documents with
    the same text count once, under their first name (the help topics "else" and "if" are one text: "if" was a
    test document and "else" a training one)."""
    first: dict[str, tuple[str, str]] = {}
    for name, text in docs:
        first.setdefault(text, (name, text))
    docs = list(first.values())
    random.Random(seed).shuffle(docs)
    total = sum(len(text) for _, text in docs)
    out, i = {"test": [], "val": [], "train": []}, 0
    for split, frac in zip(("test", "val"), fractions):
        size = 0
        while i < len(docs) - 1 and size < frac * total:
            out[split].append(docs[i])
            size += len(docs[i][1])
            i += 1
    out["train"] = docs[i:]
    return out


class PydocLM(TextDataModule):
    """Causal language modelling on the pydoc help topics (79 documents, 78 distinct texts, ~465k characters).

    Documents go whole into test / val (about 5% of the characters each, `split_seed`) and train. A byte-level
    BPE tokenizer is trained on the training documents; each document becomes <s> text </s>, and its
    token stream is cut into rows of `max_length` tokens (the last row of a document is shorter).
    Batches: input_ids, attention_mask, labels (= input_ids, -100 on padding; the task shifts them).
    Prediction prompts are encoded as <s> prompt (no </s>) and LEFT-padded, as generation needs.
    """

    tokenizer_kind = "bpe"

    def __init__(self, split_seed: int = 0, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 vocab_size: int = 4000, max_length: int = 128, **kwargs):
        super().__init__(vocab_size=vocab_size, max_length=max_length, **kwargs)
        self.split_seed, self.val_fraction, self.test_fraction = split_seed, val_fraction, test_fraction

    def make_examples(self):
        splits = split_documents(pydoc_documents(), (self.test_fraction, self.val_fraction), self.split_seed)
        return {split: [{"topic": k, "text": t} for k, t in docs] for split, docs in splits.items()}

    def tokenizer_texts(self, train):
        return [e["text"] for e in train]

    @property
    def model_overrides(self) -> dict:
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id}

    def encode(self, examples):
        tok = self.tokenizer
        ids = tok([e["text"] for e in examples], add_special_tokens=False, verbose=False)["input_ids"]  # long: cut below
        rows = []
        for e, seq in zip(examples, ids):
            if e.get("prompt"):
                rows.append({"input_ids": [tok.bos_token_id] + seq[-(self.max_length - 1):], "prompt": True})
                continue
            seq = [tok.bos_token_id] + seq + [tok.eos_token_id]
            rows += [{"input_ids": seq[i: i + self.max_length]} for i in range(0, len(seq) - 1, self.max_length)]
        return rows

    def collate(self, rows):
        pad_id = self.tokenizer.pad_token_id
        if any(r.get("prompt") for r in rows):  # prompts: left padding, so that generation continues each one
            width = max(len(r["input_ids"]) for r in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r["input_ids"])
                input_ids[i, width - n:], mask[i, width - n:] = torch.tensor(r["input_ids"]), 1
            return {"input_ids": input_ids, "attention_mask": mask}
        input_ids = pad([r["input_ids"] for r in rows], pad_id)
        mask = pad([[1] * len(r["input_ids"]) for r in rows], 0)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}

    def predict_examples(self, texts):
        return [{"text": t, "prompt": True} for t in texts]
