"""Offline image–text data: MNIST-5k digits paired with captions in several languages.

Images and the train/val/test split are exactly those of `zoo.data.images.MNIST5k` (3,600 /
400 / 1,000, stratified, seed 0). Captions are built from templates and number words from
`num2words`: "a photo of the digit seven", "une photo du chiffre sept", "sieben", ...

* `TRAIN_TEMPLATES` caption the training images (a random template and language per image and step).
* `HELD_OUT_TEMPLATES` are used only for zero-shot evaluation: none of them occurs in training,
  and the tokenizer is trained on the training captions alone.
* `CAPTION_TEMPLATES` give one canonical caption per language: the captioner's target, generated
  after a language token (`<en>`, `<fr>`, ...) that starts the decoder.

The tokenizer is zoo's byte-level BPE (`zoo.data.tokenizers.train_tokenizer("bpe", ...)`):
<pad>=0 <s>=1 </s>=2 <unk>=3, texts end with </s>, so CLIP pools at eos_token_id=2. Instead of
training it, the data modules take `tokenizer=<source>` (a folder with tokenizer.json, a tokenizer.json
file or a `zoo fit` checkpoint: `zoo.data.tokenizers.load_tokenizer_from`) or `use_tokenizer(tok)`.
It is stored in checkpoints as `zoo.data.tokenizers.tokenizer_to_state` writes it.
"""
from __future__ import annotations

import torch
from num2words import num2words
from transformers import PreTrainedTokenizerFast

from .images import MNIST5k
from .tokenizers import describe_vocab_change, encode_batch, load_tokenizer_from, same_tokenizer, train_tokenizer
from .tokenizers import tokenizer_from_state as _tokenizer_from_state
from .tokenizers import tokenizer_to_state

LANGUAGES = ("en", "fr", "de", "es")

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a photo of the digit {}", "a photo of the number {}", "the digit {}", "a handwritten {}", "number {}", "{}"),
    "fr": ("une photo du chiffre {}", "le chiffre {}", "un {} écrit à la main", "{}"),
    "de": ("ein foto der ziffer {}", "die ziffer {}", "eine handgeschriebene {}", "{}"),
    "es": ("una foto del dígito {}", "el dígito {}", "un {} escrito a mano", "{}"),
}
# Never seen in training: new word orders and new words around the number word.
HELD_OUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a picture of the number {}", "this is a handwritten digit {}", "an image of a {}", "the handwritten number {}"),
    "fr": ("une image du chiffre {}", "c'est un {}"),
    "de": ("ein bild der zahl {}", "das ist eine {}"),
    "es": ("una imagen del número {}", "es un {}"),
}
CAPTION_TEMPLATES: dict[str, str] = {
    "en": "a photo of the digit {}", "fr": "une photo du chiffre {}", "de": "ein foto der ziffer {}", "es": "una foto del dígito {}",
}


def digit_word(digit: int, lang: str) -> str:
    return num2words(int(digit), lang=lang).lower()


def captions(templates: dict[str, tuple[str, ...]], languages=LANGUAGES) -> list[list[str]]:
    """For each digit 0..9 the list of captions from every template of the chosen languages."""
    _check_languages(languages)
    return [[t.format(digit_word(d, lang)) for lang in languages for t in templates[lang]] for d in range(10)]


def class_prompts(templates: dict[str, tuple[str, ...]] = HELD_OUT_TEMPLATES, languages=LANGUAGES) -> list[str]:
    """Zero-shot prompts, template-major: entry t * 10 + c is template t filled with class c."""
    _check_languages(languages)
    return [t.format(digit_word(d, lang)) for lang in languages for t in templates[lang] for d in range(10)]


def _check_languages(languages) -> None:
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise ValueError(f"unknown caption languages {unknown}; choose from {', '.join(LANGUAGES)}")


def build_tokenizer(languages=LANGUAGES, vocab_size: int = 512, max_length: int = 24) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the training captions only (plus the canonical captions), with one
    language token per language for the captioner."""
    texts = [c for per_digit in captions(TRAIN_TEMPLATES, languages) for c in per_digit]
    texts += [CAPTION_TEMPLATES[lang].format(digit_word(d, lang)) for lang in languages for d in range(10)]
    tok = train_tokenizer("bpe", texts, vocab_size=vocab_size, model_max_length=max_length, lowercase=True, min_frequency=1)
    tok.add_special_tokens({"additional_special_tokens": [f"<{lang}>" for lang in languages]})
    return tok


# Older names, kept for the modules that import them: one storage format for every tokenizer.
tokenizer_state = tokenizer_to_state


def tokenizer_from_state(state: dict | str, max_length: int | None = None) -> PreTrainedTokenizerFast:
    """`zoo.data.tokenizers.tokenizer_from_state`; a bare backend JSON string (older checkpoints'
    `tokenizer_json`) gets model_max_length=24, the captions' default."""
    if max_length is None and not isinstance(state, dict):
        max_length = 24
    return _tokenizer_from_state(state, max_length)


class _CaptionedMNIST(MNIST5k):
    """MNIST-5k images + a tokenizer; batches become dicts with images, labels and text.

    tokenizer: use this tokenizer instead of training one: a folder with tokenizer.json, a
    tokenizer.json file or a `zoo fit` checkpoint (its size then wins over vocab_size)."""

    def __init__(self, languages: list[str] | tuple[str, ...] = LANGUAGES, vocab_size: int = 512, max_length: int = 24,
                 tokenizer: str | None = None, **kwargs):
        super().__init__(**kwargs)
        _check_languages(languages)
        self.languages = tuple(languages)
        self.vocab_size, self.max_length, self.tokenizer_path = vocab_size, max_length, tokenizer
        if tokenizer:
            self._adopt(load_tokenizer_from(tokenizer), str(tokenizer))
        else:
            self.tokenizer = build_tokenizer(self.languages, vocab_size, max_length)
        # subclasses encode their caption tables (`_encode_tables`) at the end of their __init__

    def _adopt(self, tok: PreTrainedTokenizerFast, source: str) -> None:
        describe_vocab_change(tok, self.vocab_size, source, type(self).__name__)
        self.tokenizer = tok

    def use_tokenizer(self, tok: PreTrainedTokenizerFast, source: str = "use_tokenizer") -> None:
        """Use `tok` (e.g. the tokenizer stored in a checkpoint) instead of the trained one; the caption
        tables are encoded again with it."""
        if not isinstance(tok, PreTrainedTokenizerFast):
            raise TypeError(f"use_tokenizer takes a transformers PreTrainedTokenizerFast, got {type(tok).__name__}")
        self._adopt(tok, source)
        self._encode_tables()

    def _encode_tables(self) -> None:
        """Encode what the module keeps encoded (caption tables) with the current tokenizer."""

    # The tokenizer travels inside every checkpoint, as for the text data modules (plain JSON).
    def state_dict(self) -> dict:
        return {"tokenizer": tokenizer_to_state(self.tokenizer)}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's tokenizer replaces this module's (the caption tables are encoded again)."""
        saved = state.get("tokenizer")
        if saved:
            theirs = _tokenizer_from_state(saved)
            if not same_tokenizer(theirs, self.tokenizer):
                ckpt = getattr(self.trainer, "ckpt_path", None) if self.trainer is not None else None
                self.use_tokenizer(theirs, f"the checkpoint {ckpt}" if ckpt else "the checkpoint")

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return encode_batch(self.tokenizer, texts, max_length=self.max_length, truncation=False)

    @property
    def model_overrides(self) -> dict:
        tok = self.tokenizer
        return {"in_chans": self.in_chans, "img_size": self.img_size, "vocab_size": len(tok),
                "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}


class MNISTCaptionsContrastive(_CaptionedMNIST):
    """Image–caption pairs for CLIP. Training captions: a random training template and language per
    image per step. `zero_shot_prompts()` gives held-out prompts for zero-shot evaluation.

    word_dropout: while training, drop each word around the number word with this probability
    (text augmentation: with only a few templates the text tower otherwise memorises whole
    templates and generalises worse to unseen prompts)."""

    name = "mnist5k_captions"

    def __init__(self, batch_size: int = 256, word_dropout: float = 0.0, predict_labels: list[str] | None = None, **kwargs):
        """predict_labels: candidate texts for `zoo predict` (zero-shot over them; default: the held-out class prompts)."""
        super().__init__(batch_size=batch_size, **kwargs)
        self.predict_labels = list(predict_labels) if predict_labels else None
        if not 0 <= word_dropout < 1:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = word_dropout
        self.templates = [(lang, t) for lang in self.languages for t in TRAIN_TEMPLATES[lang]]
        self._encode_tables()

    def _encode_tables(self) -> None:
        per_digit = captions(TRAIN_TEMPLATES, self.languages)
        self.per_class = len(per_digit[0])
        table = self.encode([c for texts in per_digit for c in texts])  # row d * per_class + j
        self.caption_ids, self.caption_mask = table["input_ids"], table["attention_mask"]

    @property
    def model_overrides(self) -> dict:
        return {**super().model_overrides, "context_length": self.max_length}

    def zero_shot_prompts(self, templates: dict[str, tuple[str, ...]] = HELD_OUT_TEMPLATES) -> dict[str, torch.Tensor]:
        return self.encode(class_prompts(templates, self.languages))

    def augmented_captions(self, labels: torch.Tensor) -> list[str]:
        """A random training template per label, each word around the number dropped with p=word_dropout."""
        out = []
        for digit, j in zip(labels.tolist(), torch.randint(len(self.templates), labels.shape).tolist()):
            lang, template = self.templates[j]
            words = [w for w in template.split() if w == "{}" or torch.rand(()).item() >= self.word_dropout]
            out.append(" ".join(words).format(digit_word(digit, lang)))
        return out

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.trainer is not None and self.trainer.predicting:  # images only (the user's or the test split's)
            return {"images": batch[0]}
        images, labels = super().on_after_batch_transfer(batch, dataloader_idx)
        training = self.trainer is not None and self.trainer.training
        if training and self.word_dropout > 0:
            enc = self.encode(self.augmented_captions(labels))
            return {"images": images, "labels": labels, "input_ids": enc["input_ids"].to(labels.device),
                    "attention_mask": enc["attention_mask"].to(labels.device)}
        # Training: a random caption of each image's digit; evaluation: the first (canonical) one.
        pick = torch.randint(self.per_class, labels.shape, device=labels.device) if training else torch.zeros_like(labels)
        rows = (labels * self.per_class + pick).cpu()
        ids, mask = self.caption_ids[rows], self.caption_mask[rows]
        width = int(mask.sum(1).max())  # trim the padding the whole table shares
        return {"images": images, "labels": labels, "input_ids": ids[:, :width].to(labels.device),
                "attention_mask": mask[:, :width].to(labels.device)}


class MNISTCaptioning(_CaptionedMNIST):
    """Images with their canonical caption in every language, for image-to-text.

    Each training step pairs every image with one random language; the decoder starts from that
    language's token (`<en>`, ...) and must produce the caption followed by </s>. Evaluation covers
    every (image, language) pair."""

    name = "mnist5k_captioning"

    def __init__(self, batch_size: int = 128, **kwargs):
        super().__init__(batch_size=batch_size, **kwargs)
        self._encode_tables()

    def _encode_tables(self) -> None:
        texts = [CAPTION_TEMPLATES[lang].format(digit_word(d, lang)) for lang in self.languages for d in range(10)]
        self.reference = texts  # row l * 10 + d
        table = self.encode(texts)
        self.caption_ids, self.caption_mask = table["input_ids"], table["attention_mask"]
        tokens = [f"<{lang}>" for lang in self.languages]
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer has no language token(s) {missing}; the captioner starts from them: use a "
                             "tokenizer built by zoo.data.multimodal.build_tokenizer with these languages")
        self.language_token_ids = torch.tensor([vocab[t] for t in tokens])

    @property
    def model_overrides(self) -> dict:
        return {**super().model_overrides, "bos_token_id": self.tokenizer.bos_token_id,
                "decoder_start_token_id": int(self.language_token_ids[0]), "max_len": self.max_length + 1}

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.trainer is not None and self.trainer.predicting:
            return {"images": batch[0]}
        images, labels = super().on_after_batch_transfer(batch, dataloader_idx)
        training = self.trainer is not None and self.trainer.training
        lang = (torch.randint(len(self.languages), labels.shape, device=labels.device) if training
                else torch.zeros_like(labels))
        rows = (lang * 10 + labels).cpu()
        ids, mask = self.caption_ids[rows], self.caption_mask[rows]
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width], mask[:, :width]
        start = self.language_token_ids[lang.cpu()][:, None]
        decoder_input_ids = torch.cat([start, ids[:, :-1]], dim=1)
        decoder_mask = torch.cat([torch.ones_like(start), mask[:, :-1]], dim=1)
        targets = ids.masked_fill(mask == 0, -100)
        dev = labels.device
        return {"images": images, "labels": labels, "language": lang, "decoder_input_ids": decoder_input_ids.to(dev),
                "decoder_attention_mask": decoder_mask.to(dev), "targets": targets.to(dev)}
