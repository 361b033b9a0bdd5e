"""Real English text that ships with Python: the help topics of `pydoc_data.topics` (the text of
`help("assert")`, `help("FORMATTING")`, ...; 79 topics, ~65k words of the language reference).

Paragraphs are re-joined (the source is wrapped at ~70 columns), split into sentences, and ruler
lines ("*****") dropped: about 4,000 sentences. `PydocMLM` holds out 5% for validation and 5% for
test (seed 0) and can mix in number phrases (zoo.data.numbers) so the same WordPiece tokenizer
serves the sentence-pair task that fine-tunes the pre-trained encoder: both modules train it on
the same texts (`numbers.tokenizer_corpus`), and training is deterministic. A fine-tuning run still
takes it from the pre-training checkpoint (`NumberComparison(tokenizer=<ckpt>)`), never rebuilds it.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

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

    Splits: sentences shuffled with `split_seed`, 5% val, 5% test. Number phrases come from the
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

        sents = list(pydoc_sentences())
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
