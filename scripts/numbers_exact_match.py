"""Exact match of an English -> French number translator on the small numbers a user tries first and on the
recipe's held-out test split, with the wrong answers listed.

    python scripts/numbers_exact_match.py                                   # the shipped transformer_numbers.en_fr
    python scripts/numbers_exact_match.py runs/transformer_numbers/version_0/checkpoints/last.ckpt
    python scripts/numbers_exact_match.py TAG_OR_RUN --always-train 0       # the split before 0..99 always trained

Greedy decoding, as `zoo predict` does; the reference is num2words.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.data.numbers import render, split_numbers  # noqa: E402
from zoo.runs import load_run  # noqa: E402


def translate(run, numbers: list[int], batch: int = 256) -> list[str]:
    tok, model, out = run.tokenizer, run.model.eval(), []
    for i in range(0, len(numbers), batch):
        enc = tok([render(n, "en") for n in numbers[i:i + batch]], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=24)
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="transformer_numbers.en_fr", help="a tag, run folder or checkpoint")
    p.add_argument("--always-train", type=int, default=100, help="the recipe's always_train (its test split)")
    a = p.parse_args(argv)
    run = load_run(a.model)
    test = split_numbers(9999, 1000, 500, always_train=a.always_train)["test"]
    for name, numbers in (("0..99", list(range(100))), ("100..999", list(range(100, 1000))), ("test split", test)):
        wrong = [(n, t) for n, t in zip(numbers, translate(run, numbers)) if t != render(n, "fr")]
        print(f"{name:10s} exact match {1 - len(wrong) / len(numbers):.3f} ({len(wrong)} of {len(numbers)} wrong)"
              + (f": {wrong[:10]}" if wrong else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
