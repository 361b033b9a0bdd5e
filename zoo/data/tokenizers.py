"""Tokenizers for the text families, trained with Hugging Face `tokenizers` and wrapped in
`transformers.PreTrainedTokenizerFast` (which does padding, truncation, decoding and saving).

    kind         family        special tokens (ids)                          post-processing
    wordpiece    bert          [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4      [CLS] A [SEP] (B [SEP]), token types 0/1
    unigram      t5            <pad>=0 </s>=1 <unk>=2                         A </s> (B </s>)
    bpe          transformer   <pad>=0 <s>=1 </s>=2 <unk>=3                   A </s> (B </s>); <s> starts the decoder

    tok = train_tokenizer("wordpiece", texts, vocab_size=8000, model_max_length=128)
    batch = encode_batch(tok, ["a text", "another"], max_length=128)   # dict of tensors
    save_tokenizer(tok, "runs/bert"); tok = load_tokenizer("runs/bert")
    state = tokenizer_to_state(tok); tok = tokenizer_from_state(state)  # a plain JSON-able dict
    tok = load_tokenizer_from("runs/bert/version_0/checkpoints/last.ckpt")  # or a folder, or a tokenizer.json

The pad id is 0 for every kind, so a model's `pad_token_id` default of 0 fits all three.

Training is reproducible: the same texts give a byte-identical tokenizer (`backend_tokenizer.to_str()`),
in one process or in two (see `train_tokenizer`). A trained model's tokenizer is nevertheless never
rebuilt: it is stored in every checkpoint (`tokenizer_to_state`) and read back from there
(`load_tokenizer_from`), so a recipe or library change cannot give its tokens other ids.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

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

    Deterministic: the same texts give a byte-identical tokenizer, in this process or in another one.
    The `tokenizers` trainers alone are not: they count words in Rust hash maps whose iteration order
    is random per map and per process (Rust seeds its own hashers; PYTHONHASHSEED plays no part), and

    * WordPiece: the trainer gives the continuation pieces "##x" their ids in the order it meets
      them while walking its word map, and the BPE merges it runs break ties in pair counts by the
      ids of the pair. So ties went different ways and the vocabulary itself changed: at 3,000
      tokens about 1% of the tokens, and the ids of ~400. Fixed by construction: every continuation
      piece of the texts is registered up front in sorted order, so no id is left to the hash
      order (`_continuation_pieces`).
    * Unigram: characters missing from the final model are appended with a penalty of 1e-4 per
      character in hash-set order, ties in score keep the hash order, and the EM sums run over the
      words in hash order (and in parallel chunks), so scores differ in their last bits. Fixed by
      putting the result into one canonical form (`_canonical_unigram`).
    * byte-level BPE: every character is in the initial alphabet (which the trainer sorts) and no
      prefix is used, so no id depends on the hash order; the tests check it like the others.

    Settings cannot help: the trainers take no seed, and TOKENIZERS_PARALLELISM=false leaves the hash
    order as it is.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)} "
                         f"(or tokenizer_for_family(family) for {', '.join(sorted(FAMILY_KIND))})")
    specials = SPECIALS[kind]
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {len(specials)} special tokens")
    tok, trainer_cls, post = _BUILDERS[kind](kind == "wordpiece" if lowercase is None else lowercase)
    special_list = list(specials.values())
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)
    continuation = _continuation_pieces(tok, texts) if kind == "wordpiece" else []
    kw = dict(vocab_size=vocab_size, special_tokens=special_list + continuation, show_progress=False)
    if kind == "unigram":
        kw["unk_token"] = specials["unk_token"]
    else:
        kw["min_frequency"] = min_frequency
    if kind == "bpe":
        kw["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()  # every byte encodable: no <unk> ever
    tok.train_from_iterator(texts, trainer=trainer_cls(**kw))
    if continuation:
        tok = _drop_added_tokens(tok, set(continuation))
    if kind == "unigram":
        tok = _canonical_unigram(tok, len(special_list))
    ids = [tok.token_to_id(t) for t in special_list]
    if ids != list(range(len(special_list))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(special_list) - 1}")
    tok.post_processor = processors.TemplateProcessing(
        single=post["single"], pair=post["pair"], special_tokens=[(t, tok.token_to_id(t)) for t in special_list if t in post["pair"]]
    )
    return _wrap(tok, kind, model_max_length)


def _continuation_pieces(tok: Tokenizer, texts: Sequence[str], prefix: str = "##") -> list[str]:
    """"##x" for every character x that follows another one inside a word of `texts`, sorted.

    Words are cut exactly as the trainer cuts them (this tokenizer's normalizer and pre-tokenizer).
    Handed to the WordPiece trainer after the special tokens, these pieces get the ids right after
    them, in code-point order, instead of in the order of the trainer's word hash map; they are then
    taken off the added (special) tokens again and stay ordinary vocabulary entries. Resulting id
    order: special tokens, "##x" pieces (sorted), single characters (sorted), then the merges in the
    order the trainer made them (highest pair count first, ties by the ids of the pair).
    """
    norm, pre = tok.normalizer, tok.pre_tokenizer
    chars: set[str] = set()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            chars.update(word[1:])
    return [prefix + c for c in sorted(chars)]


def _drop_added_tokens(tok: Tokenizer, contents: set[str]) -> Tokenizer:
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in contents]
    return Tokenizer.from_str(json.dumps(state, ensure_ascii=False))


# Unigram scores are kept to 6 decimals: far below any difference that decides a segmentation, far
# above the float noise (~1e-15) of the trainer's hash-ordered, chunked EM sums.
_SCORE_DECIMALS = 6
_PENALTY = 1e-4  # the trainer's step between the scores of the characters it appends (min_score_penalty_delta)


def _canonical_unigram(tok: Tokenizer, n_special: int) -> Tokenizer:
    """One canonical form for a trained Unigram vocabulary.

    Rule: the special tokens first, as trained; then every other piece sorted by its score rounded
    to `_SCORE_DECIMALS` decimals, highest first, ties by the piece's text. The characters the trainer
    appended with hash-ordered penalties (single characters scored lowest + k * 1e-4) get the same
    set of penalties again, in code-point order.
    """
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    head, pieces = vocab[:n_special], [(p, float(s)) for p, s in vocab[n_special:]]
    if pieces:
        lowest = min(s for _, s in pieces)

        def on_penalty_grid(score: float) -> bool:
            k = (score - lowest) / _PENALTY
            return abs(k - round(k)) < 1e-6 and round(k) < len(pieces)

        penalised = sorted(p for p, s in pieces if len(p) == 1 and on_penalty_grid(s))
        rescored = {p: lowest + i * _PENALTY for i, p in enumerate(penalised)}
        pieces = sorted(((p, round(rescored.get(p, s), _SCORE_DECIMALS)) for p, s in pieces), key=lambda ps: (-ps[1], ps[0]))
    state["model"]["vocab"] = head + [list(ps) for ps in pieces]
    return Tokenizer.from_str(json.dumps(state, ensure_ascii=False))


def tokenizer_kind_of(tok: PreTrainedTokenizerFast | Tokenizer) -> str | None:
    """"wordpiece", "unigram" or "bpe", from the backend model's type (None for other models)."""
    backend = getattr(tok, "backend_tokenizer", tok)
    return {"WordPiece": "wordpiece", "Unigram": "unigram", "BPE": "bpe"}.get(type(backend.model).__name__)


def _wrap(tok: Tokenizer, kind: str | None, model_max_length: int, **settings) -> PreTrainedTokenizerFast:
    """The transformers wrapper with zoo's settings for `kind`; `settings` (a stored state) override them."""
    kw: dict[str, Any] = dict(
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=kind == "wordpiece",  # BERT's " ." -> "." clean-up; the others decode exactly
        model_input_names=["input_ids", "token_type_ids", "attention_mask"] if kind == "wordpiece" else ["input_ids", "attention_mask"],
        **SPECIALS.get(kind, {}),
    )
    kw.update(settings)
    extra = kw.pop("extra_special_tokens", None)
    if extra:
        kw["extra_special_tokens"] = list(extra)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


# -- the one way a tokenizer is stored: a JSON-able dict --------------------------------------------

STATE_FORMAT = 1
_ROLES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")


def backend_json(tok: PreTrainedTokenizerFast | Tokenizer) -> str:
    """The backend tokenizer as JSON, without the truncation / padding settings that encoding calls
    leave on it (they belong to a call, not to the tokenizer): equal strings, equal tokenizers."""
    backend = getattr(tok, "backend_tokenizer", tok)
    state = json.loads(backend.to_str())
    state["truncation"] = state["padding"] = None
    return json.dumps(state, ensure_ascii=False)


def same_tokenizer(a: PreTrainedTokenizerFast | Tokenizer, b: PreTrainedTokenizerFast | Tokenizer) -> bool:
    """True when two tokenizers have the same vocabulary and pipeline (compared as `backend_json`)."""
    return backend_json(a) == backend_json(b)


def _extra_special_tokens(tok: PreTrainedTokenizerFast) -> list[str]:
    extra = getattr(tok, "extra_special_tokens", None)
    if extra is None:
        extra = getattr(tok, "additional_special_tokens", None)
    if isinstance(extra, dict):
        extra = list(extra.values())
    return [str(t) for t in extra or []]


def tokenizer_to_state(tok: PreTrainedTokenizerFast) -> dict:
    """A tokenizer as a plain JSON-able dict (what checkpoints store; loading it executes nothing):

        {"format": 1, "kind": "wordpiece" | "unigram" | "bpe" | None,
         "tokenizer_json": <the backend tokenizer's JSON, see backend_json>,
         "special_tokens": {"pad_token": "[PAD]", ...}, "extra_special_tokens": ["<en>", ...],
         "model_max_length": 64, "padding_side": "right", "truncation_side": "right",
         "clean_up_tokenization_spaces": true, "model_input_names": [...]}

    `tokenizer_from_state(tokenizer_to_state(tok))` encodes and decodes exactly as `tok` does.
    """
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TypeError(f"tokenizer_to_state takes a transformers PreTrainedTokenizerFast, got {type(tok).__name__}")
    specials = {role: str(getattr(tok, role)) for role in _ROLES if getattr(tok, role, None) is not None}
    return {
        "format": STATE_FORMAT,
        "kind": tokenizer_kind_of(tok),
        "tokenizer_json": backend_json(tok),
        "special_tokens": specials,
        "extra_special_tokens": _extra_special_tokens(tok),
        "model_max_length": int(tok.model_max_length),
        "padding_side": str(tok.padding_side),
        "truncation_side": str(tok.truncation_side),
        "clean_up_tokenization_spaces": bool(tok.clean_up_tokenization_spaces),
        "model_input_names": list(tok.model_input_names),
    }


def tokenizer_from_state(state: dict | str, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer that `tokenizer_to_state` stored (an explicit `model_max_length` overrides the stored one).

    Also takes a bare backend JSON string, as older checkpoints keep it (`tokenizer_json`): zoo's
    settings for its kind apply then, the special tokens beyond the kind's own (the captioner's "<en>",
    ...) become extra special tokens, and the length limit is `model_max_length` (default 512).
    """
    if isinstance(state, (bytes, bytearray)):
        state = state.decode("utf-8")
    if isinstance(state, str):
        parsed = json.loads(state)
        if not (isinstance(parsed, dict) and "tokenizer_json" in parsed):
            return _from_backend_json(state, model_max_length or 512)
        state = parsed
    if not isinstance(state, dict) or not isinstance(state.get("tokenizer_json"), str):
        got = f"a dict with keys {sorted(state)}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a tokenizer state: expected what tokenizer_to_state writes (a dict with a 'tokenizer_json' "
                         f"string), got {got}")
    if int(state.get("format", STATE_FORMAT)) > STATE_FORMAT:
        raise ValueError(f"tokenizer state format {state['format']} is newer than this zoo reads ({STATE_FORMAT}); update zoo")
    backend = Tokenizer.from_str(state["tokenizer_json"])
    kind = state.get("kind") or tokenizer_kind_of(backend)
    settings: dict[str, Any] = {k: state[k] for k in ("padding_side", "truncation_side", "clean_up_tokenization_spaces") if k in state}
    if "model_input_names" in state:
        settings["model_input_names"] = list(state["model_input_names"])
    if "special_tokens" in state:
        settings.update({role: state["special_tokens"].get(role) for role in _ROLES})
    settings["extra_special_tokens"] = list(state.get("extra_special_tokens") or [])
    limit = model_max_length if model_max_length is not None else state.get("model_max_length", 512)
    return _wrap(backend, kind, int(limit), **settings)


def _from_backend_json(text: str, model_max_length: int) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(text)
    kind = tokenizer_kind_of(backend)
    own = set(SPECIALS.get(kind, {}).values())
    extra = [t["content"] for t in json.loads(text).get("added_tokens", []) if t.get("special") and t["content"] not in own]
    return _wrap(backend, kind, model_max_length, extra_special_tokens=extra)


# -- where a tokenizer is kept ---------------------------------------------------------------------

# Lightning's own top-level checkpoint keys. Any other dict at the top level may be a data module's
# state: Lightning stores `LightningDataModule.state_dict()` under the data module's class name
# (checkpoint["PydocMLM"], checkpoint["NumberComparison"], ...).
_LIGHTNING_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                   "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters",
                   "datamodule_hparams_name", "datamodule_hyper_parameters"}


def _is_state(value: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(value.get("tokenizer_json"), str)
    return isinstance(value, str) and value.lstrip().startswith("{")


def checkpoint_tokenizer_state(checkpoint: dict) -> dict | str | None:
    """The tokenizer state kept in a loaded `zoo fit` checkpoint, or None. Looked for, in this order:

    1. `checkpoint["zoo"]["tokenizer"]`: the run record (a `tokenizer_to_state` dict);
    2. the data module's state, `checkpoint[<data module class name>]`: text data modules write
       {"tokenizer": <tokenizer_to_state dict>} (before: {"tokenizer_json": <backend JSON>});
    3. `checkpoint["tokenizer_json"]`: image-text tasks (a state dict, before: backend JSON).
    """
    record = checkpoint.get("zoo")
    if isinstance(record, dict) and _is_state(record.get("tokenizer")):
        return record["tokenizer"]
    for key in sorted(k for k in checkpoint if isinstance(k, str) and k not in _LIGHTNING_KEYS and k != "zoo"):
        value = checkpoint[key]
        if isinstance(value, dict):
            for field in ("tokenizer", "tokenizer_json"):
                if _is_state(value.get(field)):
                    return value[field]
    if _is_state(checkpoint.get("tokenizer_json")):
        return checkpoint["tokenizer_json"]
    return None


def load_tokenizer_from(source: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A tokenizer from wherever one is kept:

    * a folder with tokenizer.json (written by `save_tokenizer`), or a run folder with tokenizer/ in it;
    * a tokenizer.json file (the backend's JSON), or a .json file holding a `tokenizer_to_state` dict;
    * a `zoo fit` checkpoint (.ckpt, read with weights_only=True: nothing is executed); where in it:
      `checkpoint_tokenizer_state`.
    """
    from ..hub import HF_HUB_PREFIX, hub_snapshot
    from ..pretrained import is_tag, verified_path

    if isinstance(source, str) and is_tag(source):  # shipped weights: the tokenizer beside them
        source = verified_path(source)
    elif isinstance(source, str) and source.startswith(HF_HUB_PREFIX):
        source = hub_snapshot(source)
    path = Path(source)
    if path.is_dir():
        for folder in (path, path / "tokenizer"):
            if (folder / "tokenizer.json").is_file():
                return load_tokenizer(folder)
        raise FileNotFoundError(f"no tokenizer in folder {str(path)!r}: expected {str(path / 'tokenizer.json')!r} "
                                "(written by save_tokenizer) or a run folder's tokenizer/tokenizer.json")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer source {str(path)!r} does not exist; pass a folder with tokenizer.json, "
                                "a tokenizer.json file or a `zoo fit` checkpoint (.ckpt)")
    if path.suffix == ".json":
        if path.name == "tokenizer.json" and (path.parent / "tokenizer_config.json").is_file():
            return load_tokenizer(path.parent)
        try:
            return tokenizer_from_state(path.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - name the file, whatever the parser said
            raise ValueError(f"{str(path)!r} is not a tokenizer JSON file ({type(e).__name__}: {e})") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read {str(path)!r} as a checkpoint ({type(e).__name__}: {e}); pass a folder with "
                         "tokenizer.json, a tokenizer.json file or a `zoo fit` checkpoint") from None
    state = checkpoint_tokenizer_state(checkpoint) if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(f"checkpoint {str(path)!r} holds no tokenizer (looked in ['zoo']['tokenizer'], in the data "
                         "module's state and in ['tokenizer_json']); pass the run's tokenizer folder instead")
    return tokenizer_from_state(state)


def describe_vocab_change(tok: PreTrainedTokenizerFast, vocab_size: int, source: str, owner: str) -> None:
    """One info line when a tokenizer that was loaded or handed over has another size than `vocab_size` asked."""
    if len(tok) != vocab_size:
        log.info("%s: the tokenizer from %s has %d tokens, not vocab_size=%d; its size is used (model vocab_size=%d)",
                 owner, source, len(tok), vocab_size, len(tok))


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
