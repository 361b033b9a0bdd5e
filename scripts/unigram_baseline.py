"""Test perplexity of a unigram model (add-one smoothing, fitted on the training split) over the data of a
CausalLM recipe: the same tokenizer, rows and scored next-token positions as the recipe's test/ppl.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/unigram_baseline.py                       # configs/gpt_pydoc.yaml
    OMP_NUM_THREADS=1 .venv/bin/python scripts/unigram_baseline.py --tokenizer runs/gpt_pydoc/version_0/tokenizer

Without --tokenizer the data module trains its tokenizer exactly as `zoo fit` does (same texts, same size).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from zoo.tasks.text import next_token_targets, unigram_perplexity  # noqa: E402


def data_module(config: str, tokenizer: str | None):
    spec = yaml.safe_load(Path(config).read_text())["data"]
    module, _, name = spec["class_path"].rpartition(".")
    kwargs = dict(spec.get("init_args") or {})
    if tokenizer:
        kwargs["tokenizer"] = tokenizer
    dm = getattr(importlib.import_module(module), name)(**kwargs)
    dm.setup("test")
    return dm


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "gpt_pydoc.yaml"))
    p.add_argument("--tokenizer", default=None, help="a run's tokenizer/ folder (default: train it as zoo fit does)")
    p.add_argument("--smoothing", type=float, default=1.0)
    a = p.parse_args(argv)
    dm = data_module(a.config, a.tokenizer)
    vocab = len(dm.tokenizer)
    train = [dm.collate(dm.splits["train"][i:i + 64]) for i in range(0, len(dm.splits["train"]), 64)]
    test = [dm.collate(dm.splits["test"][i:i + 64]) for i in range(0, len(dm.splits["test"]), 64)]
    ppl = unigram_perplexity(train, test, vocab, a.smoothing)
    out = {"unigram_test_ppl": round(ppl, 2), "vocab_size": vocab, "smoothing": a.smoothing,
           "train_tokens": int(sum(next_token_targets(b).numel() for b in train)),
           "test_tokens": int(sum(next_token_targets(b).numel() for b in test))}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
