"""Generation speed: greedy decoding of N new tokens with the KV cache vs recomputing the prefix.

    zoo bench generate transformer_tiny t5_small --new-tokens 64

Both runs produce the same tokens (checked); EOS is disabled so that every run decodes exactly
`new_tokens` tokens. Interleaved rounds, median time, as in `zoo bench speed`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def bench_generation(name: str, batch: int = 8, src_len: int = 32, new_tokens: int = 64, rounds: int = 3,
                     warmup: int = 1) -> dict:
    from .. import create_model
    from .speed import time_interleaved

    torch.manual_seed(0)
    model = create_model(name).eval()
    if not hasattr(model, "generate"):
        raise ValueError(f"{name} has no generate(); pick an encoder-decoder (zoo models shows the families)")
    vocab = model.config.vocab_size
    src = torch.randint(3, vocab, (batch, src_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(src)
    outputs = {}

    def run(use_cache):
        def step():
            outputs[use_cache] = model.generate(src, attention_mask=mask, max_new_tokens=new_tokens, use_cache=use_cache,
                                                eos_token_id=-1)
        return step

    times = time_interleaved({"cache": run(True), "no_cache": run(False)}, warmup, rounds, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name, "batch": batch, "src_len": src_len, "new_tokens": new_tokens,
        "cache_ms": med["cache"] * 1e3, "no_cache_ms": med["no_cache"] * 1e3,
        "cache_tokens_per_s": batch * new_tokens / med["cache"], "no_cache_tokens_per_s": batch * new_tokens / med["no_cache"],
        "speedup": med["no_cache"] / med["cache"], "same_tokens": bool(torch.equal(outputs[True], outputs[False])),
        "n_timed": len(times["cache"]),
    }


def main(argv: list[str]) -> int:
    from .cli import DEFAULT_OUT, _at_least, fresh_stem, resolve_models, write_rows, write_text
    from .speed import machine_info

    ap = argparse.ArgumentParser(allow_abbrev=False, prog="zoo bench generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("patterns", nargs="*", help="encoder-decoder names (default: transformer_tiny t5_small lstm_seq2seq)")
    ap.add_argument("--batch-size", type=_at_least(1), default=8)
    ap.add_argument("--src-len", type=_at_least(1), default=32)
    ap.add_argument("--new-tokens", type=_at_least(1), default=64)
    ap.add_argument("--rounds", type=_at_least(1), default=3)
    ap.add_argument("--out", default=DEFAULT_OUT, help="directory for generation.csv / .json (default: runs/bench; an "
                    "existing file is never replaced: the next free name generation_2 ... is taken)")
    a = ap.parse_args(argv)
    names = resolve_models(a.patterns, ["transformer_tiny", "t5_small", "lstm_seq2seq"])
    info = machine_info()
    rows = []
    for name in names:
        r = bench_generation(name, a.batch_size, a.src_len, a.new_tokens, a.rounds)
        rows.append(r)
        print(f"{name:20s} batch {r['batch']}, {r['new_tokens']} new tokens: cache {r['cache_ms']:.0f} ms "
              f"({r['cache_tokens_per_s']:.0f} tok/s), no cache {r['no_cache_ms']:.0f} ms ({r['no_cache_tokens_per_s']:.0f} tok/s): "
              f"{r['speedup']:.2f}x faster with the cache; same tokens: {r['same_tokens']}", flush=True)
    out = Path(a.out)
    stem = fresh_stem(out, "generation", (".csv", ".json"))
    write_rows(rows, out / f"{stem}.csv")
    info["load_avg_1m_end"] = __import__("os").getloadavg()[0]
    write_text(out / f"{stem}.json", json.dumps({"machine": info, "rows": rows, "command": ("zoo bench generate " + " ".join(argv)).strip(),
                                                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    print(f"wrote {out}/{stem}.csv and .json (load avg {info['load_avg_1m']:.1f} -> {info['load_avg_1m_end']:.1f})")
    return 0
