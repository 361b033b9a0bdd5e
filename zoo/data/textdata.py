"""What the text data modules share: a tokenizer trained on the training split, padding collators,
prediction inputs from the command line or files, and `model_overrides` for the CLI link.

The tokenizer is trained (deterministically: the same texts give the same tokenizer) or loaded the
first time it is needed, at the latest when the CLI reads `model_overrides` to build the model, so
vocabulary size and special ids always come from it. Instead of training one, a module takes
`tokenizer=<source>`: a folder with tokenizer.json, a tokenizer.json file or a `zoo fit` checkpoint
(`zoo.data.tokenizers.load_tokenizer_from`), or a tokenizer object via `use_tokenizer(tok)`. A loaded
tokenizer's size wins over `vocab_size` (one info line says so).

`setup` saves the tokenizer into the run folder (`<default_root_dir>/tokenizer`), and it is stored
inside every checkpoint: `state_dict()` is {"tokenizer": tokenizer_to_state(tok)}, which Lightning
keeps at `checkpoint[<data module class name>]`. `load_state_dict` (resuming, `trainer.test(ckpt_path=...)`)
adopts the checkpoint's tokenizer while nothing is encoded yet and refuses a different one after.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .base import SplitDataModule
from .tokenizers import (
    describe_vocab_change, load_tokenizer_from, same_tokenizer, save_tokenizer, tokenizer_from_state, tokenizer_to_state,
    train_tokenizer,
)

Example = dict[str, Any]


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate_classification(rows: list[dict], pad_id: int) -> dict:
    """Batch rows of {input_ids, token_type_ids, label}: pad, build the attention mask, stack labels."""
    input_ids = pad([r["input_ids"] for r in rows], pad_id)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long(),
            "token_type_ids": pad([r["token_type_ids"] for r in rows], 0),
            "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long)}


def read_text_files(paths: list[str]) -> list[str]:
    """One example per non-empty line of each file."""
    texts = []
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"predict file {p!r} does not exist; pass text files with one input per line")
        data = Path(p).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:  # an image or binary file given to a text model
            from ..weights import _describe

            looks = _describe(data[:64])
            looks = f"it looks like {looks}, and " if looks != "unrecognised binary data" else ""
            raise ValueError(f"{p} is not a UTF-8 text file (a text model reads texts and text files with one input "
                             f"per line; {looks}byte 0x{data[e.start]:02x} at position {e.start} is not UTF-8): give "
                             "images and other files to a model that reads them, or save the texts as UTF-8") from None
        texts += [line.strip() for line in text.splitlines() if line.strip()]
    return texts


class TextDataModule(SplitDataModule):
    """Base class: subclasses implement `make_examples()` and `encode(examples)`/`collate(rows)`."""

    tokenizer_kind = "bpe"
    tokenizer_lowercase: bool | None = None  # whether the trained tokenizer lowercases; None: the kind's default
    predict_split = "predict"

    def __init__(self, batch_size: int = 64, vocab_size: int = 1000, max_length: int = 128, tokenizer: str | None = None,
                 num_workers: int = 0, predict_texts: list[str] | None = None, predict_files: list[str] | None = None):
        """tokenizer: use this tokenizer instead of training one: a folder with tokenizer.json (a run's
        tokenizer/ folder), a tokenizer.json file, or a `zoo fit` checkpoint whose tokenizer to reuse."""
        super().__init__()
        self.batch_size, self.vocab_size, self.max_length = batch_size, vocab_size, max_length
        self.tokenizer_path, self.num_workers = tokenizer, num_workers
        self.predict_texts, self.predict_files = predict_texts, predict_files
        self._tokenizer = None
        self._tokenizer_source: str | None = None  # where the tokenizer came from, for messages
        self._examples: dict[str, list[Example]] | None = None
        self.splits: dict[str, list[dict]] = {}

    # -- to implement -------------------------------------------------------------------------
    def make_examples(self) -> dict[str, list[Example]]:
        """{"train": [...], "val": [...], "test": [...]}, deterministic."""
        raise NotImplementedError

    def tokenizer_texts(self, train: list[Example]) -> list[str]:
        raise NotImplementedError

    def encode(self, examples: list[Example]) -> list[dict]:
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    def predict_examples(self, texts: list[str]) -> list[Example]:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    @property
    def examples(self) -> dict[str, list[Example]]:
        if self._examples is None:
            self._examples = self.make_examples()
        return self._examples

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_path:
                self._adopt(load_tokenizer_from(self.tokenizer_path), str(self.tokenizer_path))
            else:
                texts = self.tokenizer_texts(self.examples["train"])
                self._tokenizer = train_tokenizer(self.tokenizer_kind, texts, self.vocab_size, model_max_length=self.max_length,
                                                  lowercase=self.tokenizer_lowercase)
                self._tokenizer_source = "training on this data"
        return self._tokenizer

    def use_tokenizer(self, tok, source: str = "use_tokenizer") -> None:
        """Use `tok` (a transformers PreTrainedTokenizerFast, e.g. the one stored in a checkpoint) instead of
        training or loading one. Call it before `setup`; whatever was already encoded is dropped."""
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tok, PreTrainedTokenizerFast):
            raise TypeError(f"use_tokenizer takes a transformers PreTrainedTokenizerFast, got {type(tok).__name__}")
        self.splits = {}
        self._adopt(tok, source)

    def _adopt(self, tok, source: str) -> None:
        describe_vocab_change(tok, self.vocab_size, source, type(self).__name__)
        self._tokenizer, self._tokenizer_source = tok, source

    @property
    def model_overrides(self) -> dict:
        tok = self.tokenizer
        return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}

    def setup(self, stage: str | None = None):
        if stage == "predict":
            empty = [i for i, t in enumerate(self.predict_texts or []) if not str(t).strip()]
            if empty:
                raise ValueError(f"predict text {empty[0] + 1} of {len(self.predict_texts)} is empty; pass the text itself "
                                 "(--data.predict_texts '[\"...\"]'), or a file with one input per line (--data.predict_files)")
            texts = list(self.predict_texts or []) + read_text_files(list(self.predict_files or []))
            if not texts:
                raise ValueError("nothing to predict: pass --data.predict_texts '[\"...\"]' or --data.predict_files FILE")
            self.splits["predict"] = self.encode(self.predict_examples(texts))
        elif not self.splits.get("train"):
            self.splits.update({k: self.encode(v) for k, v in self.examples.items()})
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero and not trainer.fast_dev_run and stage == "fit":
            # beside the run's checkpoints (also stored inside each one); evaluating writes nothing
            save_tokenizer(self.tokenizer, os.path.join(trainer.default_root_dir, "tokenizer"))

    def decode(self, ids) -> list[str]:
        from .tokenizers import decode_batch

        return [t.strip() for t in decode_batch(self.tokenizer, ids)]

    # The tokenizer travels inside every checkpoint (plain JSON, no pickled objects).
    def state_dict(self) -> dict:
        return {"tokenizer": tokenizer_to_state(self.tokenizer)}

    def load_state_dict(self, state: dict) -> None:
        """Lightning hands over the state saved in a checkpoint (resuming, or trainer.test/predict with
        ckpt_path): its tokenizer is adopted while nothing is encoded yet; a different tokenizer after
        data were encoded is an error (the encoded ids would not fit the model)."""
        saved = state.get("tokenizer") or state.get("tokenizer_json")  # tokenizer_json: older checkpoints
        if not saved:
            return
        theirs = tokenizer_from_state(saved, None if isinstance(saved, dict) else self.max_length)
        if self._tokenizer is not None and same_tokenizer(theirs, self._tokenizer):
            return
        ckpt = getattr(self.trainer, "ckpt_path", None) if self.trainer is not None else None
        where = f"the checkpoint {ckpt}" if ckpt else "the checkpoint"
        if not any(self.splits.values()):
            self.use_tokenizer(theirs, where)
            return
        raise RuntimeError(f"{where} was trained with another tokenizer than this data module's (from "
                           f"{self._tokenizer_source}), and the data are already encoded with this one; pass "
                           f"--data.tokenizer {ckpt or '<that checkpoint>'} to use the checkpoint's tokenizer")


def dump_examples(examples: list[Example], path: str) -> None:
    """Write examples as JSON lines (handy to inspect or to reuse with zoo.data.local)."""
    with open(path, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex, ensure_ascii=False) + "\n")
