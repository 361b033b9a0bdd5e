"""Tokenizers for the text families, trained with Hugging Face `tokenizers` and wrapped in
`transformers.PreTrainedTokenizerFast` (which does padding, truncation, decoding and saving).

    kind         family        special tokens (ids)                          post-processing
    wordpiece    bert          [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4      [CLS] A [SEP] (B [SEP]), token types 0/1
    unigram      t5            <pad>=0 </s>=1 <unk>=2                         A </s> (B </s>)
    bpe          transformer   <pad>=0 <s>=1 </s>=2 <unk>=3                   A </s> (B </s>); <s> starts the decoder

    tok = train_tokenizer("wordpiece", texts, vocab_size=8000, model_max_length=128)
    batch = encode_batch(tok, ["a text", "another"], max_length=128)   # dict of tensors
    save_tokenizer(tok, "runs/bert"); tok = load_tokenizer("runs/bert")

The pad id is 0 for every kind, so a model's `pad_token_id` default of 0 fits all three.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

KINDS = ("wordpiece", "unigram", "bpe")
FAMILY_KIND = {"bert": "wordpiece", "t5": "unigram", "transformer": "bpe"}

# Special tokens in id order (the trainers put them first) and the role of each.
SPECIALS = {
    "wordpiece": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    "unigram": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
    "bpe": {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}


def tokenizer_for_family(family: str) -> str:
    """The tokenizer kind a model family uses: bert -> wordpiece, t5 -> unigram, transformer -> bpe."""
    if family not in FAMILY_KIND:
        raise ValueError(f"no tokenizer kind for family {family!r}; known families: {', '.join(sorted(FAMILY_KIND))}")
    return FAMILY_KIND[family]


def _wordpiece(lowercase: bool) -> tuple[Tokenizer, type, dict]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The wrapper's clean_up_tokenization_spaces (" ." -> ".") replaces the decoder's own clean-up, which also
    # rewrites "do not" as "don't"; decode(..., clean_up_tokenization_spaces=False) then gives the plain words.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    post = dict(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1")
    return tok, trainers.WordPieceTrainer, post


def _unigram(lowercase: bool) -> tuple[Tokenizer, type, dict]:
    tok = Tokenizer(models.Unigram())
    steps = [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]  # SentencePiece-like
    tok.normalizer = normalizers.Sequence(steps + ([normalizers.Lowercase()] if lowercase else []))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    post = dict(single="$A </s>", pair="$A </s> $B </s>")
    return tok, trainers.UnigramTrainer, post


def _bpe(lowercase: bool) -> tuple[Tokenizer, type, dict]:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    steps = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    post = dict(single="$A </s>", pair="$A </s> $B </s>")
    return tok, trainers.BpeTrainer, post


_BUILDERS = {"wordpiece": _wordpiece, "unigram": _unigram, "bpe": _bpe}


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    vocab_size: int,
    model_max_length: int = 512,
    lowercase: bool | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer of `kind` ("wordpiece", "unigram" or "bpe") on an iterable of texts.

    lowercase: None uses the family default (BERT uncased: True; T5 and byte-level BPE: False).
    model_max_length: the model's maximum positions; `encode_batch` never returns longer rows.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)} "
                         f"(or tokenizer_for_family(family) for {', '.join(sorted(FAMILY_KIND))})")
    specials = SPECIALS[kind]
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {len(specials)} special tokens")
    tok, trainer_cls, post = _BUILDERS[kind](kind == "wordpiece" if lowercase is None else lowercase)
    special_list = list(specials.values())
    kw = dict(vocab_size=vocab_size, special_tokens=special_list, show_progress=False)
    if kind == "unigram":
        kw["unk_token"] = specials["unk_token"]
    else:
        kw["min_frequency"] = min_frequency
    if kind == "bpe":
        kw["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()  # every byte encodable: no <unk> ever
    tok.train_from_iterator(texts, trainer=trainer_cls(**kw))
    ids = [tok.token_to_id(t) for t in special_list]
    if ids != list(range(len(special_list))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(special_list) - 1}")
    tok.post_processor = processors.TemplateProcessing(
        single=post["single"], pair=post["pair"], special_tokens=[(t, tok.token_to_id(t)) for t in special_list if t in post["pair"]]
    )
    return _wrap(tok, kind, model_max_length)


def _wrap(tok: Tokenizer, kind: str, model_max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=kind == "wordpiece",  # BERT's " ." -> "." clean-up; the others decode exactly
        model_input_names=["input_ids", "token_type_ids", "attention_mask"] if kind == "wordpiece" else ["input_ids", "attention_mask"],
        **SPECIALS[kind],
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
    """Write tokenizer.json + tokenizer_config.json (plain JSON) into `directory`, e.g. next to model weights."""
    os.makedirs(directory, exist_ok=True)
    tok.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer written by `save_tokenizer` (JSON only, nothing is executed; never downloads)."""
    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(f"no tokenizer.json in {str(directory)!r}; save one with zoo.data.tokenizers.save_tokenizer")
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def encode_batch(
    tok: PreTrainedTokenizerFast,
    texts: Sequence[str],
    max_length: int | None = None,
    text_pairs: Sequence[str] | None = None,
    truncation: bool = True,
    padding: bool | str = True,
) -> dict[str, torch.Tensor]:
    """Texts (and optional second segments) -> {"input_ids", "attention_mask"[, "token_type_ids"]} as tensors.

    Rows are padded to the longest in the batch (padding="max_length" pads to max_length).
    A row longer than max_length (default and upper limit: tok.model_max_length) is truncated with
    a warning, or, with truncation=False, rejected with a ValueError.
    """
    if isinstance(texts, str):
        raise TypeError("encode_batch takes a list of texts; wrap a single text as [text]")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs; pass one pair per text")
    limit = tok.model_max_length
    if max_length is None:
        max_length = limit
    elif max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the tokenizer's model_max_length={limit} (the model's "
                         "maximum positions); lower max_length or retrain the tokenizer with a larger model_max_length")
    texts, pairs = list(texts), None if text_pairs is None else list(text_pairs)
    kw = dict(return_token_type_ids="token_type_ids" in tok.model_input_names, verbose=False)
    enc = tok(texts, pairs, truncation=False, **kw)
    lengths = [len(ids) for ids in enc["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        i = too_long[0]
        if not truncation:
            raise ValueError(f"text {i} is {lengths[i]} tokens long, over the limit of max_length={max_length} "
                             f"({len(too_long)} of {len(texts)} texts are too long); shorten it or pass truncation=True")
        warnings.warn(f"{len(too_long)} of {len(texts)} texts exceed max_length={max_length} tokens "
                      f"(longest {max(lengths)}) and were truncated", stacklevel=2)
        enc = tok(texts, pairs, truncation="longest_first", max_length=max_length, **kw)
    pad_to = max_length if padding == "max_length" else None  # HF warns if max_length comes with padding=True
    return dict(tok.pad(enc, padding=padding, max_length=pad_to, return_tensors="pt"))


def decode_batch(tok: PreTrainedTokenizerFast, ids: torch.Tensor | Sequence[Sequence[int]], **kwargs) -> list[str]:
    """Token ids (a (B, L) tensor or lists) -> texts, with padding and other special tokens skipped."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 1:
            ids = ids[None]
        ids = ids.tolist()
    return tok.batch_decode(ids, skip_special_tokens=True, **kwargs)
