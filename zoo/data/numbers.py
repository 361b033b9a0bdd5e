"""Translation and comparison data generated with `num2words`: fully offline, any size, exact answers.

Numbers 0 .. max_number (default 9,999: 10,000 numbers) are shuffled with `split_seed` and cut into
test (default 1,000 numbers), validation (500) and train (the rest, 8,500); with `always_train=100` the
numbers 0..99 (the words every larger number is made of) are never held out. Every example of a split
is built from that split's numbers only, so no test number is ever seen in training, in any
language or task.

Renderings ("languages"): any num2words language code ("en", "fr", "de", "es", "it", ...) or
"digits", the decimal digits separated by spaces ("3 1 2") so that every tokenizer sees single digits.

    NumberTranslation(tasks=["en-fr"])                  "three hundred and twelve" -> "trois cent douze"
    NumberTranslation(tasks=["en-fr", "digits-de", "en-digits"], prefix=True)
        T5-style text-to-text mix: "translate English to French: three hundred and twelve" -> "trois cent douze",
        "digits to German: 3 1 2" -> "dreihundertzwölf", "words to digits: three hundred and twelve" -> "3 1 2"
    NumberComparison(languages=["en", "fr"])            ("trois cent douze", "ninety-nine") -> 1 (first is larger)
"""
from __future__ import annotations

import random

import numpy as np
from num2words import num2words

from .textdata import Example, TextDataModule, collate_classification, pad

LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
                  "nl": "Dutch", "pt": "Portuguese", "digits": "digits"}


def render(n: int, lang: str) -> str:
    """A number as words in `lang` (num2words) or as space-separated digits."""
    if lang == "digits":
        return " ".join(str(n))
    return num2words(n, lang=lang)


def split_numbers(max_number: int, n_test: int, n_val: int, seed: int = 0, always_train: int = 0) -> dict[str, list[int]]:
    """0..max_number shuffled with `seed`, cut into disjoint test / val / train lists. The numbers below
    `always_train` are never held out: they stay in train, and test / val are cut from the others in the same
    shuffled order (always_train=0: the plain cut)."""
    if not 0 <= always_train <= max_number + 1:
        raise ValueError(f"always_train={always_train} must lie in 0..{max_number + 1} (max_number + 1)")
    if n_test + n_val >= max_number + 1 - always_train:
        raise ValueError(f"n_test={n_test} + n_val={n_val} leave no training numbers in {always_train}..{max_number}; "
                         f"raise max_number or lower n_test / n_val / always_train")
    perm = np.random.default_rng(seed).permutation(max_number + 1).tolist()
    held = [n for n in perm if n >= always_train][:n_test + n_val]
    out = set(held)
    return {"test": held[:n_test], "val": held[n_test:], "train": [n for n in perm if n not in out]}


def parse_task(task: str) -> tuple[str, str]:
    try:
        src, tgt = task.split("-")
    except ValueError:
        raise ValueError(f"task {task!r} must look like 'en-fr' or 'digits-de' (source-target)") from None
    for lang in (src, tgt):
        if lang != "digits":
            try:
                num2words(1, lang=lang)
            except NotImplementedError:
                raise ValueError(f"num2words has no language {lang!r} (task {task!r}); use e.g. en, fr, de, es, it or digits") from None
    return src, tgt


def task_prefix(src: str, tgt: str) -> str:
    """T5-style instruction: "translate English to French: ", "digits to German: ", "words to digits: "."""
    if src == "digits":
        return f"digits to {LANGUAGE_NAMES.get(tgt, tgt)}: "
    if tgt == "digits":
        return "words to digits: " if src == "en" else f"{LANGUAGE_NAMES.get(src, src)} words to digits: "
    return f"translate {LANGUAGE_NAMES.get(src, src)} to {LANGUAGE_NAMES.get(tgt, tgt)}: "


class _NumbersBase(TextDataModule):
    def __init__(self, max_number: int = 9999, n_test: int = 1000, n_val: int = 500, split_seed: int = 0,
                 always_train: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.max_number, self.n_test, self.n_val, self.split_seed = max_number, n_test, n_val, split_seed
        self.always_train = always_train
        split_numbers(max_number, n_test, n_val, split_seed, always_train)  # bad sizes fail here, not at setup

    @property
    def numbers(self) -> dict[str, list[int]]:
        return split_numbers(self.max_number, self.n_test, self.n_val, self.split_seed, self.always_train)


class NumberTranslation(_NumbersBase):
    """Sequence-to-sequence pairs {"source", "target", "task"}; one example per (number, task).

    tasks: "src-tgt" codes (see the module docstring). prefix: prepend the T5 instruction to the source.
    Defaults: 10,000 numbers -> 8,500 train / 500 val / 1,000 test numbers per task.
    small_repeats: each training number below `always_train` appears this many times an epoch. In a uniform draw
    over 0..9,999 one number in a hundred is below 100, and the words those are made of (quinze, soixante-dix)
    otherwise come mostly inside long compounds: without the repeats a model that gets 99.6% of the held-out
    numbers right answered "one" with "mille". The tokenizer is trained on the texts without the repeats.
    """

    tokenizer_kind = "bpe"

    def __init__(self, tasks: list[str] = ("en-fr",), prefix: bool = False, tokenizer_kind: str = "bpe",
                 vocab_size: int = 1000, max_length: int = 64, small_repeats: int = 1, **kwargs):
        super().__init__(vocab_size=vocab_size, max_length=max_length, **kwargs)
        if small_repeats < 1:
            raise ValueError(f"small_repeats={small_repeats}: each training number appears at least once (1 = no repeats)")
        if small_repeats > 1 and not self.always_train:
            raise ValueError(f"small_repeats={small_repeats} repeats the training numbers below always_train, which is 0: "
                             "set always_train too (e.g. 100)")
        self.small_repeats = small_repeats
        self.tasks = [parse_task(t) for t in tasks]
        self.task_names = list(tasks)
        self.prefix = prefix
        self.tokenizer_kind = tokenizer_kind

    @property
    def tokenizer_lowercase(self) -> bool | None:
        """num2words writes lowercase words, so without the (capitalised) T5 instructions the texts have no capitals:
        the tokenizer lowercases, and "Forty-Two" reads as "forty-two" instead of as bytes it never saw in training.
        The same ids as without it for every training text."""
        return None if self.prefix else True

    def source_text(self, n: int, src: str, tgt: str) -> str:
        text = render(n, src)
        return task_prefix(src, tgt) + text if self.prefix else text

    def make_examples(self) -> dict[str, list[Example]]:
        out = {}
        for split, nums in self.numbers.items():
            out[split] = [{"source": self.source_text(n, s, t), "target": render(n, t), "task": name, "number": n}
                          for n in nums for name, (s, t) in zip(self.task_names, self.tasks)]
        if self.small_repeats > 1:
            small = [ex for ex in out["train"] if ex["number"] < self.always_train]
            out["train"] += [{**ex, "repeat": True} for ex in small * (self.small_repeats - 1)]
        return out

    def tokenizer_texts(self, train):
        train = [ex for ex in train if not ex.get("repeat")]  # the repeats leave the tokenizer alone
        return [ex["source"] for ex in train] + [ex["target"] for ex in train]

    @property
    def model_overrides(self) -> dict:
        tok = self.tokenizer
        out = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
        # transformer: the decoder starts from <s>; T5 (no <s> in its vocabulary) starts from pad, its default
        if tok.bos_token_id is not None:
            out["decoder_start_token_id"] = tok.bos_token_id
            out["bos_token_id"] = tok.bos_token_id
        return out

    def encode(self, examples):
        tok = self.tokenizer
        src = tok([e["source"] for e in examples], truncation=True, max_length=self.max_length)["input_ids"]
        tgt = tok([e.get("target", "") for e in examples], truncation=True, max_length=self.max_length)["input_ids"]
        return [{"input_ids": s, "labels": t, "target": e.get("target", ""), "task": e.get("task", "")}
                for s, t, e in zip(src, tgt, examples)]

    def collate(self, rows):
        pad_id = self.tokenizer.pad_token_id
        input_ids = pad([r["input_ids"] for r in rows], pad_id)
        labels = pad([r["labels"] for r in rows], -100)
        return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long(), "labels": labels,
                "target_text": [r["target"] for r in rows], "task": [r["task"] for r in rows]}

    def predict_examples(self, texts):
        return [{"source": t, "target": "", "task": "predict"} for t in texts]


class NumberComparison(_NumbersBase):
    """Sentence pairs: two numbers written in (possibly different) languages; label 1 if the first is larger.

    Each split draws `pairs_per_split` = (train, val, test) pairs of distinct numbers from its own numbers;
    each side's language is drawn from `languages`. Half of the pairs are numbers close to each other
    (|a - b| <= `near`), so the model must read every digit, not only the thousands.
    The WordPiece tokenizer is trained on these phrases plus, with `with_corpus=True` (default),
    the standard-library help texts of zoo.data.corpus, so that it is the same tokenizer a
    `PydocMLM(with_numbers=True)` pre-training run builds (same languages, numbers and vocab_size;
    training is deterministic). Fine-tuning a pre-trained encoder, pass `tokenizer=<its checkpoint>`
    so the ids are the checkpoint's own whatever the settings (the CLI does so for `init_from`).
    """

    tokenizer_kind = "wordpiece"

    def __init__(self, languages: list[str] = ("en", "fr"), pairs_per_split: tuple[int, int, int] = (20000, 1000, 2000),
                 near: int = 20, with_corpus: bool = True, vocab_size: int = 4000, max_length: int = 64, **kwargs):
        super().__init__(vocab_size=vocab_size, max_length=max_length, **kwargs)
        self.languages, self.pairs_per_split, self.near, self.with_corpus = list(languages), tuple(pairs_per_split), near, with_corpus

    def make_examples(self):
        out = {}
        for split, count, salt in zip(("train", "val", "test"), self.pairs_per_split, (1, 2, 3)):
            nums = sorted(self.numbers[split])
            rng = random.Random(self.split_seed * 1000 + salt)
            examples = []
            while len(examples) < count:
                i = rng.randrange(len(nums))
                if rng.random() < 0.5:  # a close neighbour in this split's (sorted) numbers
                    j = min(len(nums) - 1, max(0, i + rng.choice([-1, 1]) * rng.randint(1, max(1, self.near))))
                else:
                    j = rng.randrange(len(nums))
                a, b = nums[i], nums[j]
                if a == b:
                    continue
                la, lb = rng.choice(self.languages), rng.choice(self.languages)
                examples.append({"text": render(a, la), "text_pair": render(b, lb), "label": int(a > b)})
            out[split] = examples
        return out

    def tokenizer_texts(self, train):
        return tokenizer_corpus(self.languages, self.numbers["train"], self.with_corpus)

    @property
    def model_overrides(self) -> dict:
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "num_classes": 2}

    def encode(self, examples):
        enc = self.tokenizer([e["text"] for e in examples], [e.get("text_pair") or "" for e in examples],
                             truncation=True, max_length=self.max_length, return_token_type_ids=True)
        return [{"input_ids": i, "token_type_ids": t, "label": e.get("label", -1)}
                for i, t, e in zip(enc["input_ids"], enc["token_type_ids"], examples)]

    def collate(self, rows):
        return collate_classification(rows, self.tokenizer.pad_token_id)

    def predict_examples(self, texts):
        """Each predict text is 'first ||| second', both halves non-empty."""
        out = []
        for t in texts:
            parts = [s.strip() for s in t.split("|||")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"pair inputs are written 'first ||| second' (one separator, text on both sides), got {t!r}")
            out.append({"text": parts[0], "text_pair": parts[1], "label": -1})
        return out


def tokenizer_corpus(languages: list[str], train_numbers: list[int], with_corpus: bool = True) -> list[str]:
    """Texts the shared BERT WordPiece tokenizer is trained on: training numbers in every language
    (+ the pydoc help texts). PydocMLM and NumberComparison both call this, so they build the same tokenizer."""
    texts = [render(n, lang) for lang in languages for n in sorted(train_numbers)]
    if with_corpus:
        from .corpus import pydoc_lines

        texts += pydoc_lines()
    return texts
